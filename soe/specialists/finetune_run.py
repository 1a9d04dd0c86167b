"""A fine-tuning run directory (`run_finetune`, the public ``soe.finetune`` and ``soe finetune``): fine-tune a
specialist on in-house texts, keeping checkpoints on a geometric schedule.

Output directory (a run directory; every subdirectory is a loadable specialist):
    step-000004/ step-000008/ … step-<T>/   checkpoints at steps 4, 8, 16, …, T (geometric: what merging needs)
    best/                                   the state with the lowest held-out loss (early stopping)
    last/                                   the final state
    finetune.json                           settings, held-out history, the saved steps (written last)
With LoRA the adapters are merged into each checkpoint's weights, or with ``keep_adapter`` kept beside the
starting weights as peft's adapter_model.safetensors + adapter_config.json (loaded, merged, by soe).
The training loop itself is soe/specialists/finetune.py; the command line soe/cli/finetune.py.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

MARKER = "finetune.json"


def check_run_dir(out: Path, overwrite: bool) -> None:
    """Refuse an existing --out unless --overwrite and it is a previous finetune run (or empty)."""
    if not os.path.lexists(out):
        return
    if not overwrite:
        raise FileExistsError(f"output directory {out} already exists; pass --overwrite to replace it")
    if out.is_symlink() or not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file()):
        raise FileExistsError(
            f"output {out} is not a soe finetune run directory (no {MARKER}); --overwrite "
            "replaces only those: remove it yourself or choose another --out"
        )


def _start(source: str, weights, data, device):
    from soe.specialists import load as api

    if "@" in str(source) and not Path(source).exists():
        if weights is not None:
            raise ValueError(
                f"source {source} gives its weights after '@' and --weights {weights} gives them again; "
                "expected one of CKPT@WEIGHTS or CKPT --weights WEIGHTS"
            )
        source, weights = str(source).rsplit("@", 1)
    obj = api.load(source, data=data, device=device)
    if isinstance(obj, api.Soup):
        return obj.specialist(weights or "prior")
    if weights is not None:
        raise ValueError(f"--weights/@WEIGHTS applies to a checkpoint, but {source} is an exported specialist")
    return obj


def run_finetune(
    source,
    texts,
    out,
    *,
    weights=None,
    text_field: str = "text",
    max_docs: int | None = None,
    steps: int = 256,
    lr: float | None = None,
    batch_size: int = 16,
    warmup: int = 10,
    holdout: float = 0.1,
    eval_every: int = 32,
    patience: int | None = None,
    first_checkpoint: int = 4,
    seed: int = 0,
    lora=None,
    keep_adapter: bool = False,
    fmt: str = "hf",
    overwrite: bool = False,
    data=None,
    device=None,
    log=print,
) -> dict:
    """The Python API of ``soe finetune`` (soe/cli/finetune.py): returns the finetune.json record.
    ``lora``: a `soe.specialists.lora.LoRA` for LoRA, None for full fine-tuning."""
    import torch

    from soe.checks import check_seed
    from soe.data.text import read_texts, token_stream
    from soe.specialists import lora as L
    from soe.specialists.atomic import atomic_dir
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
        return _run(
            source,
            texts,
            out,
            tmp,
            start,
            net,
            stream,
            start_params,
            text_field=text_field,
            max_docs=max_docs,
            steps=steps,
            lr=lr,
            batch_size=batch_size,
            warmup=warmup,
            holdout=holdout,
            eval_every=eval_every,
            patience=patience,
            first_checkpoint=first_checkpoint,
            seed=seed,
            lora=lora,
            keep_adapter=keep_adapter,
            fmt=fmt,
            log=log,
        )


def _run(
    source,
    texts,
    out: Path,
    tmp: Path,
    start,
    net,
    stream,
    start_params,
    *,
    text_field,
    max_docs,
    steps,
    lr,
    batch_size,
    warmup,
    holdout,
    eval_every,
    patience,
    first_checkpoint,
    seed,
    lora,
    keep_adapter,
    fmt,
    log,
) -> dict:
    """Fine-tune and write the run into ``tmp`` (renamed to ``out`` by the caller)."""
    from soe.fileio import atomic_write_json
    from soe.specialists import lora as L
    from soe.specialists.export import save_specialist
    from soe.specialists.finetune import finetune, geometric_steps

    saved: list[dict] = []

    def save(name: str, step: int, loss: float) -> None:
        info = {
            **start.info,
            "finetune": {
                "source": str(source),
                "step": step,
                "holdout_loss": loss,
                "lora": None if lora is None else {"rank": lora.rank, "alpha": lora.alpha},
            },
        }
        params = start_params if keep_adapter else L.merged_params(net)
        d = save_specialist(
            tmp / name, params, net.cfg, tokenizer_file=start.tokenizer_file, eos_id=start.eos_id, info=info, fmt=fmt
        )
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
        log(
            f"fine-tuning ({mode}) {source} on {len(stream):,} tokens of {texts}: {steps} steps, checkpoints at {schedule}"
        )
    lr = lr or (1e-3 if lora is not None else 3e-4)
    ft = finetune(
        net,
        stream,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        warmup=warmup,
        holdout=holdout,
        eval_every=eval_every,
        seed=seed,
        save_at=schedule,
        patience=patience,
        log=log,
        on_save=lambda step, loss: save(f"step-{step:06d}", step, loss),
    )
    shutil.copytree(tmp / saved[-1]["dir"], tmp / "last")
    save("best", ft.best_step, ft.holdout_loss)  # finetune() left the model in its best state
    record = {
        "source": str(source),
        "texts": str(texts),
        "text_field": text_field,
        "max_docs": max_docs,
        "holdout": holdout,
        "mode": mode,
        "lr": lr,
        "steps": ft.steps,
        "best_step": ft.best_step,
        "holdout_loss_start": ft.holdout_loss_start,
        "holdout_loss": ft.holdout_loss,
        "tokens": ft.tokens,
        "wall_s": round(ft.wall_s, 2),
        "checkpoints": saved,
        "history": ft.history,
    }
    atomic_write_json(tmp / MARKER, record)
    if log:
        log(
            f"held-out loss {ft.holdout_loss_start:.4f} -> {ft.holdout_loss:.4f} (best at step {ft.best_step}); "
            f"wrote {out}/ ({len(saved) - 1} checkpoints, best/, last/, {MARKER})"
        )
    return record
