"""``soe estimate-weights``: the domain weights h of in-house texts (histogram, optionally refined on the loss).

soe estimate-weights CKPT --texts inhouse.jsonl [--refine] --out weights.json
soe estimate-weights data/fixture --texts inhouse.jsonl            # the prepared directory alone: no checkpoint
"""

from __future__ import annotations

import sys
from pathlib import Path

from soe.cli.types import (
    check_out_file,
    common,
    nonneg_float,
    open_fraction,
    positive_float,
    positive_int,
    weight_floor,
)


def add_parser(sub) -> None:
    p = sub.add_parser("estimate-weights", help="domain weights h of in-house texts (weights.json)")
    p.add_argument("source", help="checkpoint, run directory, or prepared-data directory")
    p.add_argument(
        "--texts", required=True, help="in-house texts: .txt/.jsonl/.json/.parquet, datasets dir, hf:NAME[:SPLIT]"
    )
    p.add_argument("--text-field", default="text", help="field/column holding the text (default: text)")
    p.add_argument("--max-docs", type=positive_int, help="use at most this many documents")
    p.add_argument(
        "--min-weight", type=weight_floor, default=0.0, help="drop domains below this weight, renormalise (in [0, 1))"
    )
    p.add_argument(
        "--temperature",
        type=positive_float,
        default=None,
        help="soft histogram: spread each chunk over the domains as softmax(-distance²/T) (c-BTM: 0.1); "
        "default: nearest centroid",
    )
    p.add_argument("--out", default="weights.json", help="where to write {domain: weight} (default: weights.json)")
    p.add_argument("--top", type=positive_int, default=5, help="print this many top domains")
    p.add_argument("--refine", action="store_true", help="then optimise h on the soup's loss (needs a checkpoint)")
    p.add_argument(
        "--refine-method",
        choices=("adam", "bfgs"),
        default="adam",
        help="adam (default): Adam on random batches of the fit part; bfgs: BFGS on a fixed sample of "
        "--refine-windows fit windows, ~5x faster, the sample's optimum; see README",
    )
    p.add_argument(
        "--refine-steps",
        type=positive_int,
        default=None,
        help="Adam steps / BFGS iterations of --refine at most (≥ 1; default 200 / 15; it stops earlier "
        "on its held-out part)",
    )
    p.add_argument("--refine-lr", type=positive_float, default=0.05, help="learning rate of --refine-method adam (> 0)")
    p.add_argument(
        "--refine-windows",
        type=positive_int,
        default=64,
        help="fit windows (evenly spaced) whose mean loss --refine-method bfgs minimises (≥ 1)",
    )
    p.add_argument(
        "--holdout", type=open_fraction, default=0.2, help="fraction of in-house tokens for early stopping, in (0, 1)"
    )
    p.add_argument(
        "--refine-tol",
        type=nonneg_float,
        default=0.0,
        help="held-out improvement below this does not count (stops earlier; default 0: any decrease)",
    )
    p.add_argument(
        "--refine-precision",
        choices=("auto", "bf16", "fp32"),
        default="fp32",
        help="precision of --refine's gradient passes (auto: bf16 on a CPU with bf16 units, faster); "
        "held-out losses stay fp32",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    common(p)


def _is_prepared(path: str) -> bool:
    return (Path(path) / "meta.json").is_file()


def cmd_estimate(a) -> None:
    from soe import api
    from soe.core.weights import parse_weights, save_weights, top_domains
    from soe.data.shards import load_meta
    from soe.specialists.estimate import estimate_weights

    check_out_file(a.out, "--out", {"SOURCE": a.source, "--texts": a.texts, "--data": a.data})  # before any work
    # progress goes to stderr so that stdout keeps only the result (scripts parse it)
    say = None if a.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    if _is_prepared(a.source):
        if a.refine:
            raise ValueError(f"--refine needs a checkpoint, but {a.source} is a prepared-data directory")
        domains, data_dir, soup = load_meta(a.source).domains, a.source, None
        est = estimate_weights(
            data_dir,
            a.texts,
            max_docs=a.max_docs,
            min_weight=a.min_weight,
            text_field=a.text_field,
            progress=say,
            temperature=a.temperature,
        )
    else:
        soup = api.load(a.source, data=a.data, device=a.device)
        if not isinstance(soup, api.Soup):
            raise ValueError(
                f"{a.source} is an exported specialist; estimate-weights needs a checkpoint or prepared dir"
            )
        domains = soup.domains
        est = estimate_weights(
            soup.data_dir,
            a.texts,
            max_docs=a.max_docs,
            min_weight=a.min_weight,
            text_field=a.text_field,
            progress=say,
            temperature=a.temperature,
        )
    total = sum(est.tokens.values())
    print(f"estimated domain weights from {est.n_docs} documents ({est.n_chunks} chunks, {total} tokens); top domains:")
    for d, w in top_domains(est.weights, a.top):
        print(f"  {d:<24} {w:.4f}")
    weights = est.weights
    if a.refine:
        method = dict(lr=a.refine_lr) if a.refine_method == "adam" else dict(fit_windows=a.refine_windows)
        r = soup.refine(
            a.texts,
            est.weights,
            max_docs=a.max_docs,
            text_field=a.text_field,
            steps=a.refine_steps,
            method=a.refine_method,
            holdout=a.holdout,
            tol=a.refine_tol,
            progress=say,
            bf16={"auto": None, "bf16": True, "fp32": False}[a.refine_precision],
            **method,
        )
        print(
            f"refinement ({r.steps} {a.refine_method} steps, {r.evaluations} gradient evaluations, {r.fit_windows} "
            f"fit / {r.holdout_windows} held-out windows):"
        )
        print(f"  in-sample loss  {r.fit_loss_start:.4f} (histogram) -> {r.fit_loss:.4f} (refined)")
        print(f"  held-out loss   {r.holdout_loss_start:.4f} (histogram) -> {r.holdout_loss:.4f} (refined)")
        print("  kept the refined weights" if r.improved else "  no held-out improvement: kept the histogram")
        for d, w in top_domains(r.weights, a.top):
            print(f"  {d:<24} {w:.4f}")
        weights = r.weights
    out = save_weights(a.out, parse_weights(weights, domains), domains)
    print(f"wrote {out}")
