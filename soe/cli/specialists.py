"""``soe instantiate``, ``evaluate`` and ``generate``: from a trained soup to specialists (h: soe/cli/estimate.py).

soe instantiate CKPT --weights weights.json --out my-specialist [--format hf|soe] [--overwrite]
soe evaluate --specialist my-specialist --ckpt CKPT --weights weights.json --prior --json eval.json
soe generate my-specialist --prompt "Once upon a time" --max-tokens 80
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from soe.cli.types import check_out_file, common, nonneg_int, positive_int, seed_arg, temperature_arg, token_count_arg
from soe.fileio import atomic_write_text

INSTANTIATE = """Write Θ(h) as a standalone dense model directory. The export is atomic: written beside --out
and renamed into place, so an interrupted export leaves the previous directory or the new one (a crash
in the middle of replacing one is repaired by the next export, or by loading --out). --overwrite
replaces only a directory soe wrote (holding soe_specialist.json) or an empty one: a directory of other
files, or a file, is refused and left untouched. A dense checkpoint (n = 0 experts, the generic model)
does not depend on h: it accepts only --weights prior and its export is labelled dense, without weights."""


def add_parsers(sub) -> None:
    p = sub.add_parser("instantiate", help="write a standalone dense specialist Θ(h)", description=INSTANTIATE)
    p.add_argument("ckpt", help="checkpoint, run directory, or http(s):// URL of a checkpoint")
    p.add_argument(
        "--weights",
        required=True,
        help="weights.json, 'a=0.3,b=0.7', a domain name, or 'prior' (a dense checkpoint accepts only 'prior')",
    )
    p.add_argument("--out", required=True, help="output directory (refused if it exists, unless --overwrite)")
    p.add_argument(
        "--format", choices=("hf", "soe"), default="hf", help="hf: LlamaForCausalLM directory; soe: own format"
    )
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output directory, only if soe wrote it (it holds soe_specialist.json) "
        "or it is empty; anything else is refused, never deleted",
    )
    common(p)

    p = sub.add_parser(
        "evaluate",
        help="loss / perplexity / bits-per-byte table",
        description="Loss of each model on each set: the token-mean next-token loss over at most "
        "--windows non-overlapping windows of the model's context length, evenly spread "
        "(the rule of training validation and experiments: soe/data/windows.py).",
    )
    p.add_argument("--specialist", action="append", default=[], help="exported specialist directory (repeatable)")
    p.add_argument("--ckpt", help="checkpoint or run directory")
    p.add_argument(
        "--weights", action="append", default=[], help="evaluate the checkpoint at these weights (repeatable)"
    )
    p.add_argument(
        "--prior", action="store_true", help="evaluate the checkpoint at its prior h (default with --ckpt alone)"
    )
    p.add_argument(
        "--sets",
        default=None,
        help="comma list: val, specialists, a specialist set name, or a prepared dir "
        "(default: val,specialists; none when only --texts is given)",
    )
    p.add_argument(
        "--texts",
        action="append",
        default=[],
        help="evaluate on raw documents: .txt/.jsonl/.json/.parquet, datasets dir, hf:NAME[:SPLIT] (repeatable)",
    )
    p.add_argument("--text-field", default="text", help="field/column holding the text of --texts (default: text)")
    p.add_argument("--max-docs", type=positive_int, help="use at most this many documents of each --texts input")
    p.add_argument("--split", default="val", choices=("train", "val"))
    p.add_argument("--windows", type=positive_int, default=512, help="windows evaluated per set at most (default: 512)")
    p.add_argument("--json", help="write the rows as JSON here")
    p.add_argument("--md", help="write the markdown table here")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary line on stderr")
    common(p)

    p = sub.add_parser("generate", help="sample text from a specialist")
    p.add_argument("model", help="exported specialist directory, or a checkpoint (with --weights)")
    p.add_argument("--weights", default=None, help="with a checkpoint: domain weights (default: prior)")
    p.add_argument("--prompt", default="")
    p.add_argument("--max-tokens", type=token_count_arg, default=100, help="tokens to generate at most (≥ 1)")
    p.add_argument("--temperature", type=temperature_arg, default=0.8, help="0: greedy, else ≥ 1e-4")
    p.add_argument("--top-k", type=nonneg_int, default=50, help="sample among the k most likely tokens; 0: all")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--num-samples", type=positive_int, default=1)
    common(p)


def cmd_instantiate(a) -> None:
    import torch

    from soe.core.weights import top_domains
    from soe.specialists.export import check_out, recover

    recover(a.out)  # an earlier export killed mid-swap: put its directory back before judging --out
    check_out(a.out, a.overwrite)  # fail before loading anything
    soup = _load_soup(a.ckpt, a)
    spec = soup.specialist(a.weights)
    n = sum(p.numel() for p in spec.model.parameters())
    what = "the dense model (n = 0 experts)" if spec.weights is None else f"Θ(h) (n={soup.model.n} experts)"
    print(f"instantiated {what}, {n / 1e6:.2f}M parameters, in {spec.instantiate_s * 1e3:.1f} ms")
    out = spec.save(a.out, a.format, a.overwrite, getattr(torch, a.dtype))
    if spec.weights is None:
        print(f"wrote {a.format} dense model to {out} (no domain weights: the generic model)")
        return
    top = ", ".join(f"{d}={w:.3f}" for d, w in top_domains(spec.weights, 5))
    print(f"wrote {a.format} specialist to {out} (weights: {top})")


def _load_soup(path, a):
    from soe import api

    soup = api.load(path, data=a.data, device=a.device)
    if not isinstance(soup, api.Soup):
        raise ValueError(f"{path} is an exported specialist directory; expected a training checkpoint")
    return soup


def cmd_evaluate(a) -> None:
    from soe import api
    from soe.specialists import evaluate as ev

    if not a.specialist and not a.ckpt:
        raise ValueError("nothing to evaluate: pass --specialist DIR and/or --ckpt CKPT")
    if a.weights and not a.ckpt:
        raise ValueError("--weights needs --ckpt")
    inputs = {
        "--ckpt": a.ckpt,
        "--data": a.data,
        **{f"--texts[{i}]": t for i, t in enumerate(a.texts)},
        **{f"--specialist[{i}]": d for i, d in enumerate(a.specialist)},
    }
    for flag, out in (("--json", a.json), ("--md", a.md)):  # refuse before minutes of evaluation, not after
        if out:
            check_out_file(out, flag, inputs)
    if a.json and a.md and Path(a.json).absolute() == Path(a.md).absolute():
        raise ValueError(f"--json and --md name the same file {a.json}; expected two files")
    models, data = {}, a.data
    soup = _load_soup(a.ckpt, a) if a.ckpt else None
    if soup is not None:
        data = soup.data_dir
        for w in a.weights:
            models[f"soup@{w}"] = soup.specialist(w)
        if a.prior or not a.weights:
            models["dense" if soup.model.n == 0 else "soup@prior"] = soup.specialist("prior")
    for d in a.specialist:
        spec = api.load(d, device=a.device)
        if not isinstance(spec, api.Specialist):
            raise ValueError(f"--specialist {d} is not an exported specialist directory")
        names = [Path(x).name for x in a.specialist]
        models[Path(d).name if names.count(Path(d).name) == 1 else str(d).rstrip("/")] = spec  # ft/a/best, ft/b/best
    if a.sets is not None and not [s for s in a.sets.split(",") if s.strip()]:
        raise ValueError(
            f"--sets {a.sets!r} names no set; expected a comma list of val, specialists, set names or "
            "prepared directories"
        )
    sets = [] if a.sets is None and a.texts else (a.sets or "val,specialists").split(",")
    if sets and data is None:
        raise ValueError("pass --data DIR (the prepared-data directory holding the evaluation sets) or --texts FILE")
    eval_sets = ev.eval_sets(data, [s for s in sets if s], a.split) if sets else []
    eval_sets += [ev.text_set(t, a.text_field, a.max_docs) for t in a.texts]
    t0 = time.perf_counter()
    rows = ev.evaluate(models, eval_sets, a.windows, progress=not a.quiet)
    if not a.quiet:  # stderr: stdout keeps only the table (and the files written)
        print(
            f"evaluated {len(models)} model(s) on {len(eval_sets)} set(s): {sum(r['tokens'] for r in rows):,} tokens "
            f"in {time.perf_counter() - t0:.1f}s",
            file=sys.stderr,
        )
    md = ev.markdown_table(rows)
    print(md, end="")
    for out, text in ((a.md, md), (a.json, json.dumps(rows, indent=2) + "\n")):
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out, text)
            print(f"wrote {out}")


def cmd_generate(a) -> None:
    from soe import api

    obj = api.load(a.model, data=a.data, device=a.device)
    if not isinstance(obj, api.Soup) and a.weights is not None:
        raise ValueError(
            f"--weights {a.weights} applies to a checkpoint, but {a.model} is an exported specialist "
            "(its weights are fixed); drop --weights or give a checkpoint"
        )
    spec = obj.specialist(a.weights or "prior") if isinstance(obj, api.Soup) else obj
    for i in range(a.num_samples):
        if a.num_samples > 1:
            print(f"--- sample {i + 1}")
        print(spec.generate(a.prompt, a.max_tokens, a.temperature, a.top_k or None, a.seed + i))


COMMANDS = {"instantiate": cmd_instantiate, "evaluate": cmd_evaluate, "generate": cmd_generate}
