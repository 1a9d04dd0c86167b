"""``soe finetune``: fine-tune a specialist on in-house texts, keeping checkpoints on a geometric schedule.

    soe finetune team-a-specialist --texts team-a.jsonl --out ft/team-a [--steps 256] [--lora-rank 8]
    soe finetune runs/soe/last.ckpt@law --texts law.jsonl --out ft/law          # Θ(h) straight from a soup
    soe finetune --stop-for-merge merge.yaml --out merged     # each run's checkpoint chosen for the merge

Output directory (a run directory; every subdirectory is a loadable specialist):
    step-000004/ step-000008/ … step-<T>/   checkpoints at steps 4, 8, 16, …, T (geometric: what merging needs)
    best/                                   the state with the lowest held-out loss (early stopping)
    last/                                   the final state
    finetune.json                           settings, held-out history, the saved steps (written last)
With LoRA the adapters are merged into each checkpoint's weights, or with --keep-adapter kept beside the
starting weights as peft's adapter_model.safetensors + adapter_config.json (loaded, merged, by soe).

--stop-for-merge CONFIG: a `soe merge` config whose models are finetune run directories. Each run's checkpoint is
chosen by the *merged* model's held-out loss, greedily one run at a time from the individually best ones
(soe/merging/stopping.py); the merge at the chosen checkpoints is written to --out with stop_for_merge.json.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from soe.checks import seed_arg

FINETUNE = __doc__.split("\n\n")[0]
MARKER = "finetune.json"


def add_parser(sub, common, positive_int, positive_float, open_fraction) -> None:
    p = sub.add_parser("finetune", help="fine-tune a specialist (full or LoRA), geometric checkpoints",
                       description=__doc__.split("\n\n", 1)[1])
    p.add_argument("source", nargs="?", help="specialist directory, checkpoint (with --weights), or CKPT@WEIGHTS")
    p.add_argument("--stop-for-merge", metavar="CONFIG", default=None,
                   help="choose each run's checkpoint for the merge of this soe merge config (no SOURCE/--texts)")
    p.add_argument("--texts", help="in-house texts: .txt/.jsonl/.json/.parquet, datasets dir, hf:NAME[:SPLIT]")
    p.add_argument("--out", required=True, help="run directory (refused if it exists, unless --overwrite)")
    p.add_argument("--weights", default=None, help="with a checkpoint: domain weights of the start (default: prior)")
    p.add_argument("--text-field", default="text")
    p.add_argument("--max-docs", type=positive_int)
    p.add_argument("--steps", type=positive_int, default=256, help="optimizer steps at most (default 256)")
    p.add_argument("--lr", type=positive_float, default=None, help="peak learning rate (default 3e-4; LoRA 1e-3)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--warmup", type=positive_int, default=10)
    p.add_argument("--holdout", type=open_fraction, default=0.1, help="fraction of the tokens held out, in (0, 1)")
    p.add_argument("--eval-every", type=positive_int, default=32, help="held-out evaluation every N steps")
    p.add_argument("--patience", type=positive_int, default=None, help="stop after N evaluations without a new best")
    p.add_argument("--first-checkpoint", type=positive_int, default=4, help="first step of the geometric schedule")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--lora-rank", type=positive_int, default=None, help="LoRA (peft) of this rank instead of full fine-tuning")
    p.add_argument("--lora-alpha", type=positive_float, default=16.0)
    p.add_argument("--lora-targets", default=None, help="comma list of projections (default: all seven)")
    p.add_argument("--keep-adapter", action="store_true", help="LoRA: keep the adapter instead of merging it")
    p.add_argument("--format", choices=("hf", "soe"), default="hf")
    p.add_argument("--overwrite", action="store_true", help="replace a previous soe finetune run directory")
    common(p)


def check_run_dir(out: Path, overwrite: bool) -> None:
    """Refuse an existing --out unless --overwrite and it is a previous finetune run (or empty)."""
    if not os.path.lexists(out):
        return
    if not overwrite:
        raise FileExistsError(f"output directory {out} already exists; pass --overwrite to replace it")
    if out.is_symlink() or not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file()):
        raise FileExistsError(f"output {out} is not a soe finetune run directory (no {MARKER}); --overwrite "
                              "replaces only those: remove it yourself or choose another --out")


def _start(source: str, weights, data, device):
    from soe import api

    if "@" in str(source) and not Path(source).exists():
        if weights is not None:
            raise ValueError(f"source {source} gives its weights after '@' and --weights {weights} gives them again; "
                             "expected one of CKPT@WEIGHTS or CKPT --weights WEIGHTS")
        source, weights = str(source).rsplit("@", 1)
    obj = api.load(source, data=data, device=device)
    if isinstance(obj, api.Soup):
        return obj.specialist(weights or "prior")
    if weights is not None:
        raise ValueError(f"--weights/@WEIGHTS applies to a checkpoint, but {source} is an exported specialist")
    return obj


def run_finetune(source, texts, out, *, weights=None, text_field: str = "text", max_docs: int | None = None,
                 steps: int = 256, lr: float | None = None, batch_size: int = 16, warmup: int = 10,
                 holdout: float = 0.1, eval_every: int = 32, patience: int | None = None, first_checkpoint: int = 4,
                 seed: int = 0, lora=None, keep_adapter: bool = False, fmt: str = "hf", overwrite: bool = False,
                 data=None, device=None, log=print) -> dict:
    """The Python API of ``soe finetune`` (module docstring): returns the finetune.json record.
    ``lora``: a `soe.specialists.lora.LoRA` for LoRA, None for full fine-tuning."""
    import torch

    from soe.checks import check_seed
    from soe.data.text import read_texts, token_stream
    from soe.specialists import lora as L
    from soe.specialists.export import atomic_dir
    from soe.specialists.finetune import check_stream_size

    # every input is checked before --out is touched: a refusal leaves the file system as it was
    out = Path(out)
    check_run_dir(out, overwrite)
    check_seed(seed, "--seed")
    if keep_adapter and lora is None:
        raise ValueError("--keep-adapter needs --lora-rank (keep_adapter needs lora)")
    start = _start(source, weights, data, device)
    net = start.model
    stream = token_stream(read_texts(texts, text_field, max_docs), start.tokenizer_file, start.eos_id)
    check_stream_size(len(stream), holdout, net.cfg.max_seq_len)
    start_params = {k: v.detach().clone() for k, v in net.named_parameters()}
    if lora is not None:
        torch.manual_seed(seed)  # peft draws lora_A's init from the global generator
        L.add_lora(net, lora)
    with atomic_dir(out, overwrite, MARKER) as tmp:  # written beside --out, renamed into place when complete
        return _run(source, texts, out, tmp, start, net, stream, start_params, text_field=text_field,
                    max_docs=max_docs, steps=steps, lr=lr, batch_size=batch_size, warmup=warmup, holdout=holdout,
                    eval_every=eval_every, patience=patience, first_checkpoint=first_checkpoint, seed=seed, lora=lora,
                    keep_adapter=keep_adapter, fmt=fmt, log=log)


def _run(source, texts, out: Path, tmp: Path, start, net, stream, start_params, *, text_field, max_docs, steps, lr,
         batch_size, warmup, holdout, eval_every, patience, first_checkpoint, seed, lora, keep_adapter, fmt,
         log) -> dict:
    """Fine-tune and write the run into ``tmp`` (renamed to ``out`` by the caller)."""
    from soe.fileio import atomic_write_json
    from soe.specialists import lora as L
    from soe.specialists.export import save_specialist
    from soe.specialists.finetune import finetune, geometric_steps

    saved: list[dict] = []

    def save(name: str, step: int, loss: float) -> None:
        info = {**start.info, "finetune": {"source": str(source), "step": step, "holdout_loss": loss,
                                           "lora": None if lora is None else {"rank": lora.rank, "alpha": lora.alpha}}}
        params = start_params if keep_adapter else L.merged_params(net)
        d = save_specialist(tmp / name, params, net.cfg, tokenizer_file=start.tokenizer_file, eos_id=start.eos_id,
                            info=info, fmt=fmt)
        if keep_adapter:
            from safetensors.torch import save_file

            save_file(L.adapter_state(net), str(d / "adapter_model.safetensors"), metadata={"format": "pt"})
            atomic_write_json(d / "adapter_config.json", L.adapter_config(lora, str(source)))
        saved.append({"dir": name, "step": step, "holdout_loss": loss})
        if log:
            log(f"  saved {out / d.name}")

    schedule = geometric_steps(steps, first_checkpoint)
    mode = f"LoRA r={lora.rank}" if lora is not None else "full"
    if log:
        log(f"fine-tuning ({mode}) {source} on {len(stream):,} tokens of {texts}: {steps} steps, checkpoints at {schedule}")
    lr = lr or (1e-3 if lora is not None else 3e-4)
    ft = finetune(net, stream, steps=steps, lr=lr, batch_size=batch_size, warmup=warmup, holdout=holdout,
                  eval_every=eval_every, seed=seed, save_at=schedule, patience=patience, log=log,
                  on_save=lambda step, loss: save(f"step-{step:06d}", step, loss))
    shutil.copytree(tmp / saved[-1]["dir"], tmp / "last")
    save("best", ft.best_step, ft.holdout_loss)  # finetune() left the model in its best state
    record = {"source": str(source), "texts": str(texts), "text_field": text_field, "max_docs": max_docs,
              "holdout": holdout, "mode": mode, "lr": lr, "steps": ft.steps,
              "best_step": ft.best_step, "holdout_loss_start": ft.holdout_loss_start, "holdout_loss": ft.holdout_loss,
              "tokens": ft.tokens, "wall_s": round(ft.wall_s, 2), "checkpoints": saved, "history": ft.history}
    atomic_write_json(tmp / MARKER, record)
    if log:
        log(f"held-out loss {ft.holdout_loss_start:.4f} -> {ft.holdout_loss:.4f} (best at step {ft.best_step}); "
            f"wrote {out}/ ({len(saved) - 1} checkpoints, best/, last/, {MARKER})")
    return record


def cmd_finetune(a) -> None:
    from soe.specialists import lora as L

    if a.stop_for_merge:
        if a.source or a.texts:
            raise ValueError("--stop-for-merge takes the runs from its config's models; drop SOURCE and --texts")
        from soe.merging.stopping import stop_for_merge

        stop_for_merge(a.stop_for_merge, a.out, overwrite=a.overwrite)
        return
    if not a.source or not a.texts:
        raise ValueError("soe finetune needs SOURCE and --texts (or --stop-for-merge CONFIG)")
    spec = L.LoRA(a.lora_rank, a.lora_alpha, tuple(a.lora_targets.split(",")) if a.lora_targets else L.TARGETS) \
        if a.lora_rank else None
    run_finetune(a.source, a.texts, a.out, weights=a.weights, text_field=a.text_field, max_docs=a.max_docs,
                 steps=a.steps, lr=a.lr, batch_size=a.batch_size, warmup=a.warmup, holdout=a.holdout,
                 eval_every=a.eval_every, patience=a.patience, first_checkpoint=a.first_checkpoint, seed=a.seed,
                 lora=spec, keep_adapter=a.keep_adapter, fmt=a.format, overwrite=a.overwrite, data=a.data,
                 device=a.device)
