"""``soe estimate-weights``, ``instantiate``, ``evaluate`` and ``generate``: from a trained soup to specialists.

    soe estimate-weights CKPT --texts inhouse.jsonl [--refine] --out weights.json
    soe instantiate CKPT --weights weights.json --out my-specialist [--format hf|soe] [--overwrite]
    soe evaluate --specialist my-specialist --ckpt CKPT --weights weights.json --prior --json eval.json
    soe generate my-specialist --prompt "Once upon a time" --max-tokens 80
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from soe.cli.types import (check_out_file, common, nonneg_float, nonneg_int, open_fraction, positive_float,
                           positive_int, seed_arg, temperature_arg, token_count_arg, weight_floor)
from soe.fileio import atomic_write_text

INSTANTIATE = """Write Θ(h) as a standalone dense model directory. The export is atomic: written beside --out
and renamed into place, so an interrupted export leaves the previous directory or the new one (a crash
in the middle of replacing one is repaired by the next export, or by loading --out). --overwrite
replaces only a directory soe wrote (holding soe_specialist.json) or an empty one: a directory of other
files, or a file, is refused and left untouched. A dense checkpoint (n = 0 experts, the generic model)
does not depend on h: it accepts only --weights prior and its export is labelled dense, without weights."""


def add_parsers(sub) -> None:
    p = sub.add_parser("estimate-weights", help="domain weights h of in-house texts (weights.json)")
    p.add_argument("source", help="checkpoint, run directory, or prepared-data directory")
    p.add_argument("--texts", required=True, help="in-house texts: .txt/.jsonl/.json/.parquet, datasets dir, hf:NAME[:SPLIT]")
    p.add_argument("--text-field", default="text", help="field/column holding the text (default: text)")
    p.add_argument("--max-docs", type=positive_int, help="use at most this many documents")
    p.add_argument("--min-weight", type=weight_floor, default=0.0, help="drop domains below this weight, renormalise (in [0, 1))")
    p.add_argument("--temperature", type=positive_float, default=None,
                   help="soft histogram: spread each chunk over the domains as softmax(-distance²/T) (c-BTM: 0.1); "
                        "default: nearest centroid")
    p.add_argument("--out", default="weights.json", help="where to write {domain: weight} (default: weights.json)")
    p.add_argument("--top", type=positive_int, default=5, help="print this many top domains")
    p.add_argument("--refine", action="store_true", help="then optimise h on the soup's loss (needs a checkpoint)")
    p.add_argument("--refine-method", choices=("adam", "bfgs"), default="adam",
                   help="adam (default): Adam on random batches of the fit part; bfgs: BFGS on a fixed sample of "
                        "--refine-windows fit windows, ~5x faster, the sample's optimum; see README")
    p.add_argument("--refine-steps", type=positive_int, default=None,
                   help="Adam steps / BFGS iterations of --refine at most (≥ 1; default 200 / 15; it stops earlier "
                        "on its held-out part)")
    p.add_argument("--refine-lr", type=positive_float, default=0.05, help="learning rate of --refine-method adam (> 0)")
    p.add_argument("--refine-windows", type=positive_int, default=64,
                   help="fit windows (evenly spaced) whose mean loss --refine-method bfgs minimises (≥ 1)")
    p.add_argument("--holdout", type=open_fraction, default=0.2, help="fraction of in-house tokens for early stopping, in (0, 1)")
    p.add_argument("--refine-tol", type=nonneg_float, default=0.0,
                   help="held-out improvement below this does not count (stops earlier; default 0: any decrease)")
    p.add_argument("--refine-precision", choices=("auto", "bf16", "fp32"), default="fp32",
                   help="precision of --refine's gradient passes (auto: bf16 on a CPU with bf16 units, faster); "
                        "held-out losses stay fp32")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    common(p)

    p = sub.add_parser("instantiate", help="write a standalone dense specialist Θ(h)", description=INSTANTIATE)
    p.add_argument("ckpt", help="checkpoint, run directory, or http(s):// URL of a checkpoint")
    p.add_argument("--weights", required=True, help="weights.json, 'a=0.3,b=0.7', a domain name, or 'prior' "
                                                    "(a dense checkpoint accepts only 'prior')")
    p.add_argument("--out", required=True, help="output directory (refused if it exists, unless --overwrite)")
    p.add_argument("--format", choices=("hf", "soe"), default="hf", help="hf: LlamaForCausalLM directory; soe: own format")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output directory, only if soe wrote it (it holds soe_specialist.json) "
                        "or it is empty; anything else is refused, never deleted")
    common(p)

    p = sub.add_parser("evaluate", help="loss / perplexity / bits-per-byte table",
                       description="Loss of each model on each set: the token-mean next-token loss over at most "
                                   "--windows non-overlapping windows of the model's context length, evenly spread "
                                   "(the rule of training validation and experiments: soe/data/windows.py).")
    p.add_argument("--specialist", action="append", default=[], help="exported specialist directory (repeatable)")
    p.add_argument("--ckpt", help="checkpoint or run directory")
    p.add_argument("--weights", action="append", default=[], help="evaluate the checkpoint at these weights (repeatable)")
    p.add_argument("--prior", action="store_true", help="evaluate the checkpoint at its prior h (default with --ckpt alone)")
    p.add_argument("--sets", default=None,
                   help="comma list: val, specialists, a specialist set name, or a prepared dir "
                        "(default: val,specialists; none when only --texts is given)")
    p.add_argument("--texts", action="append", default=[],
                   help="evaluate on raw documents: .txt/.jsonl/.json/.parquet, datasets dir, hf:NAME[:SPLIT] (repeatable)")
    p.add_argument("--text-field", default="text", help="field/column holding the text of --texts (default: text)")
    p.add_argument("--max-docs", type=positive_int, help="use at most this many documents of each --texts input")
    p.add_argument("--split", default="val", choices=("train", "val"))
    p.add_argument("--windows", type=positive_int, default=512, help="windows evaluated per set at most (default: 512)")
    p.add_argument("--json", help="write the rows as JSON here")
    p.add_argument("--md", help="write the markdown table here")
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
        est = estimate_weights(data_dir, a.texts, max_docs=a.max_docs, min_weight=a.min_weight, text_field=a.text_field,
                               progress=say, temperature=a.temperature)
    else:
        soup = api.load(a.source, data=a.data, device=a.device)
        if not isinstance(soup, api.Soup):
            raise ValueError(f"{a.source} is an exported specialist; estimate-weights needs a checkpoint or prepared dir")
        domains = soup.domains
        est = estimate_weights(soup.data_dir, a.texts, max_docs=a.max_docs, min_weight=a.min_weight,
                               text_field=a.text_field, progress=say, temperature=a.temperature)
    total = sum(est.tokens.values())
    print(f"estimated domain weights from {est.n_docs} documents ({est.n_chunks} chunks, {total} tokens); top domains:")
    for d, w in top_domains(est.weights, a.top):
        print(f"  {d:<24} {w:.4f}")
    weights = est.weights
    if a.refine:
        method = dict(lr=a.refine_lr) if a.refine_method == "adam" else dict(fit_windows=a.refine_windows)
        r = soup.refine(a.texts, est.weights, max_docs=a.max_docs, text_field=a.text_field, steps=a.refine_steps,
                        method=a.refine_method, holdout=a.holdout, tol=a.refine_tol, progress=say,
                        bf16={"auto": None, "bf16": True, "fp32": False}[a.refine_precision], **method)
        print(f"refinement ({r.steps} {a.refine_method} steps, {r.evaluations} gradient evaluations, {r.fit_windows} "
              f"fit / {r.holdout_windows} held-out windows):")
        print(f"  in-sample loss  {r.fit_loss_start:.4f} (histogram) -> {r.fit_loss:.4f} (refined)")
        print(f"  held-out loss   {r.holdout_loss_start:.4f} (histogram) -> {r.holdout_loss:.4f} (refined)")
        print("  kept the refined weights" if r.improved else "  no held-out improvement: kept the histogram")
        for d, w in top_domains(r.weights, a.top):
            print(f"  {d:<24} {w:.4f}")
        weights = r.weights
    out = save_weights(a.out, parse_weights(weights, domains), domains)
    print(f"wrote {out}")


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
    inputs = {"--ckpt": a.ckpt, "--data": a.data, **{f"--texts[{i}]": t for i, t in enumerate(a.texts)},
              **{f"--specialist[{i}]": d for i, d in enumerate(a.specialist)}}
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
        raise ValueError(f"--sets {a.sets!r} names no set; expected a comma list of val, specialists, set names or "
                         "prepared directories")
    sets = [] if a.sets is None and a.texts else (a.sets or "val,specialists").split(",")
    if sets and data is None:
        raise ValueError("pass --data DIR (the prepared-data directory holding the evaluation sets) or --texts FILE")
    eval_sets = ev.eval_sets(data, [s for s in sets if s], a.split) if sets else []
    eval_sets += [ev.text_set(t, a.text_field, a.max_docs) for t in a.texts]
    rows = ev.evaluate(models, eval_sets, a.windows)
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
        raise ValueError(f"--weights {a.weights} applies to a checkpoint, but {a.model} is an exported specialist "
                         "(its weights are fixed); drop --weights or give a checkpoint")
    spec = obj.specialist(a.weights or "prior") if isinstance(obj, api.Soup) else obj
    for i in range(a.num_samples):
        if a.num_samples > 1:
            print(f"--- sample {i + 1}")
        print(spec.generate(a.prompt, a.max_tokens, a.temperature, a.top_k or None, a.seed + i))


COMMANDS = {"estimate-weights": cmd_estimate, "instantiate": cmd_instantiate, "evaluate": cmd_evaluate,
            "generate": cmd_generate}
