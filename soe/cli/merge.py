"""``soe merge``: the merging subcommand of the ``soe`` CLI (the merge itself: soe/merging/).

soe merge --config merge.yaml --out merged/ [--overwrite]
soe merge --config merge.yaml --report        # soup base: in-span share of each task vector, no output
"""

from __future__ import annotations

from soe.cli.types import common

MERGE = """Merge fine-tuned specialists into one specialist directory, from a config in mergekit's conventions
(merge_method, base_model, models: [{model, parameters: {weight, density}}], parameters, dtype). Methods:
linear, task_arithmetic, ties, dare_linear, dare_ties, and from a few unlabelled exemplars per model regmean,
lot, cat. base_model may be a soup: {soup: CKPT, h: mean | alpha-mean | <weights>}; with it,
parameters.bank_projection merges each task vector's part in the expert bank's span in α-space. See
docs/merging.md. Inputs are streamed tensor by tensor; the output is written atomically."""


def add_parser(sub) -> None:
    p = sub.add_parser("merge", help="merge fine-tuned specialists (mergekit-style config)", description=MERGE)
    p.add_argument("--config", required=True, help="merge config (YAML)")
    p.add_argument("--out", help="output specialist directory (refused if it exists, unless --overwrite)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output directory, only if soe wrote it or it is empty",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="with a soup base: print each task vector's in-span share and write nothing",
    )
    common(p)


def cmd_merge(a) -> None:
    from soe.merging.config import check_paths, load_config
    from soe.merging.merge import in_span_report, merge
    from soe.specialists.export import check_out

    cfg = load_config(a.config)
    if a.report:
        shares = in_span_report(cfg)
        print("share of each task vector in the span of the expert bank (‖Σ_j δ_j E_j‖ / ‖τ‖):")
        for m, s in zip(cfg.models, shares):
            print(f"  {s:7.4f}  {m.model}")
        return
    if not a.out:
        raise ValueError("--out DIR is required (or --report to only print the in-span shares)")
    check_paths(cfg, a.out)  # --out apart from every input, each model once
    check_out(a.out, a.overwrite)  # refuse before reading anything
    print(f"merging {len(cfg.models)} models with {cfg.merge_method} ({cfg.source})")
    r = merge(cfg, a.out, a.overwrite)
    print(
        f"wrote {r.out}: {r.tensors} tensors, {r.parameters / 1e6:.2f}M parameters, {cfg.dtype}, "
        f"read {r.bytes_read / 1e6:.1f} MB, wrote {r.bytes_written / 1e6:.1f} MB in {r.seconds:.2f} s"
    )
