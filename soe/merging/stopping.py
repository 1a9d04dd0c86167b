"""Mergeability-aware stopping: choose each fine-tuned model's checkpoint by the *merged* model's validation loss.

Experts fine-tuned long can memorise what merging then forgets ("Less is More", Horoi et al. 2025), and the step
that is best for one expert alone need not be best for the merge. The rule (greedy, one model at a time): start
from each model's individually best checkpoint; for model 1, try each of its checkpoints with the others fixed and
keep the one whose merge has the lowest validation loss; then model 2 with model 1's choice fixed; and so on, one
pass. Cost: Σ_u (checkpoints of u) merges and validations. Used by ``soe finetune --stop-for-merge`` and by the
merging experiment (studies/merging).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence


def greedy_checkpoints(
    options: Sequence[Sequence],
    start: Sequence,
    value: Callable[[list], float],
    log: Callable[[str], None] | None = None,
) -> tuple[list, list[dict]]:
    """(choice, history): ``options[u]`` are model u's checkpoints, ``start[u]`` its individually best one,
    ``value(choice)`` the merged model's validation loss. A model keeps its current checkpoint unless another is
    strictly better."""
    if len(options) != len(start) or any(s not in o for s, o in zip(start, options)):
        raise ValueError("greedy_checkpoints: every model's starting checkpoint must be one of its options")
    choice = list(start)
    best = value(choice)
    history = [{"model": None, "choice": list(choice), "value": best}]
    for u, opts in enumerate(options):
        entry = choice[u]  # its merge's value is known: `best`
        for o in opts:
            if o == entry:
                continue
            trial = choice[:u] + [o] + choice[u + 1 :]
            v = value(trial)
            history.append({"model": u, "choice": list(trial), "value": v})
            if v < best:
                best, choice = v, trial
        if log:
            log(f"  model {u}: checkpoint {choice[u]} (merged validation loss {best:.4f})")
    return choice, history


def _held_out(run: Path, rec: dict, where: str):
    """The run's held-out windows (the tail ``holdout`` of its texts, as `finetune` cut it) and its model size."""
    from soe.data.text import read_texts, token_stream
    from soe.data.windows import eval_windows
    from soe.specialists.load import load

    if "holdout" not in rec:
        raise ValueError(f"{where}: {run}/finetune.json records no holdout (written by an older soe); fine-tune again")
    sp = load(run / "best", device="cpu")
    stream = token_stream(
        read_texts(rec["texts"], rec.get("text_field", "text"), rec.get("max_docs")), sp.tokenizer_file, sp.eos_id
    )
    T = sp.model.cfg.max_seq_len
    cut = int(len(stream) * (1 - rec["holdout"]))
    return eval_windows(stream[cut:], T, max_windows=64)


def stop_for_merge(config, out, overwrite: bool = False, log=print) -> dict:
    """``soe finetune --stop-for-merge CONFIG --out DIR``: CONFIG is a `soe merge` config whose models are
    ``soe finetune`` run directories; each model's checkpoint (among its step-NNNNNN/) is chosen greedily by the
    merged model's loss on the runs' held-out parts, and that merge is written to ``out`` with
    stop_for_merge.json (the choice and every trial)."""
    import dataclasses
    import tempfile

    from soe.fileio import atomic_write_json, read_json
    from soe.merging.config import load_config
    from soe.merging.merge import merge
    from soe.specialists.atomic import check_out
    from soe.specialists.evaluate import model_loss
    from soe.specialists.export import load_specialist

    cfg = load_config(config)
    check_out(out, overwrite)
    options, start, held = [], [], []
    for i, m in enumerate(cfg.models):
        run, where = Path(m.model), f"{cfg.source}: models[{i}]"
        if not (run / "finetune.json").is_file():
            raise FileNotFoundError(
                f"{where}: {run} is not a `soe finetune` run directory (no finetune.json); "
                "--stop-for-merge chooses among a run's step-NNNNNN checkpoints"
            )
        rec = read_json(run / "finetune.json", "fine-tuning record")
        steps = {c["step"]: c["dir"] for c in rec["checkpoints"] if c["dir"].startswith("step-")}
        best = steps.get(rec["best_step"], "best")  # the best state when it fell between checkpoints
        options.append(sorted(set(steps.values()) | {best}))
        start.append(best)
        held.append(_held_out(run, rec, where))

    def configured(choice: list[str]):
        return dataclasses.replace(
            cfg, models=[dataclasses.replace(m, model=str(Path(m.model) / c)) for m, c in zip(cfg.models, choice)]
        )

    with tempfile.TemporaryDirectory(prefix=".stop-for-merge-", dir=Path(out).resolve().parent) as tmp:

        def value(choice: list[str]) -> float:
            merge(configured(choice), Path(tmp) / "m", overwrite=True, log=None)
            net, _ = load_specialist(Path(tmp) / "m")
            return sum(model_loss(net, w) for w in held) / len(held)

        if log:
            log(
                f"stop-for-merge: {len(options)} runs, {sum(map(len, options))} checkpoints, merge_method "
                f"{cfg.merge_method}; starting from the individually best checkpoints {start}"
            )
        choice, history = greedy_checkpoints(options, start, value, log)
    merge(configured(choice), out, overwrite=overwrite, log=None)
    record = {"config": str(config), "individual": start, "choice": choice, "history": history}
    atomic_write_json(Path(out) / "stop_for_merge.json", record)
    if log:
        log(
            f"merged at checkpoints {choice} (held-out loss {history[0]['value']:.4f} at the individual ones -> "
            f"{min(h['value'] for h in history):.4f}); wrote {out}"
        )
    return record
