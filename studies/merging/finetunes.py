"""Fine-tuning runs of the merging experiment: geometric checkpoints on disk, reused when already finished.

One run = `soe.specialists.finetune.finetune` (the procedure of ``soe finetune``) from a start state dict on a team's
stream, its validation part held out; the held-out part is scored only at the checkpoint steps (4, 8, 16, …, T),
so the best state is always one of the checkpoints (or the start, step 0). Each checkpoint is a safetensors file
of dense weights (LoRA adapters folded in) under ``<dir>/step-NNNNNN.safetensors``; ``<dir>/run.json`` is written
last, so a run interrupted before it is simply run again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from soe.core.model import LlamaLM, ModelConfig
from soe.fileio import atomic_write_json, read_json
from soe.specialists.finetune import finetune, geometric_steps

RECORD = "run.json"


def ckpt_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"step-{step:06d}.safetensors"


def load_state(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(ckpt_path(run_dir, step)))


def save_state(path: Path, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(path)


def dense_state(net: LlamaLM) -> dict[str, torch.Tensor]:
    """Dense HF-named weights (a LoRA model's adapters folded in)."""
    from soe.specialists import lora as L

    if any("lora_" in n for n, _ in net.named_parameters()):
        return L.merged_params(net)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def run(
    run_dir: Path,
    start: dict[str, torch.Tensor],
    net_cfg: ModelConfig,
    stream: np.ndarray,
    holdout: float,
    *,
    steps: int,
    first: int,
    lr: float,
    batch_size: int,
    seed: int,
    val_windows: int,
    lora_rank: int = 0,
    log=print,
) -> dict:
    """Fine-tune from ``start``; returns run.json: {steps, best_step, checkpoints: {step: validation loss}, …}."""
    run_dir = Path(run_dir)
    if (run_dir / RECORD).is_file():
        return read_json(run_dir / RECORD, "fine-tuning record")
    run_dir.mkdir(parents=True, exist_ok=True)
    net = LlamaLM(net_cfg)
    net.load_state_dict(start, strict=True)
    if lora_rank:
        from soe.specialists import lora as L

        torch.manual_seed(seed)  # peft draws lora_A's init from the global generator
        L.add_lora(net, L.LoRA(rank=lora_rank, alpha=2.0 * lora_rank))
    schedule = geometric_steps(steps, first)
    losses: dict[int, float] = {}

    def on_save(step: int, loss: float) -> None:
        save_state(ckpt_path(run_dir, step), dense_state(net))
        losses[step] = loss

    ft = finetune(
        net,
        stream,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        warmup=max(1, min(10, steps // 8)),
        holdout=holdout,
        eval_every=steps + 1,
        seed=seed,
        save_at=schedule,
        on_save=on_save,
        holdout_windows=val_windows,
    )
    record = {
        "steps": steps,
        "best_step": ft.best_step,
        "start_loss": ft.holdout_loss_start,
        "checkpoints": {str(s): v for s, v in losses.items()},
        "lora_rank": lora_rank,
        "wall_s": round(ft.wall_s, 2),
        "tokens": ft.tokens,
        "history": ft.history,
    }
    if ft.best_step == 0:  # fine-tuning never helped: the start is the best state
        save_state(ckpt_path(run_dir, 0), start)
    atomic_write_json(run_dir / RECORD, record)
    if log:
        log(
            f"    {run_dir.name}: validation {ft.holdout_loss_start:.3f} -> {ft.holdout_loss:.3f} "
            f"(best step {ft.best_step}, {ft.wall_s:.0f} s)"
        )
    return record


def checkpoint_losses(record: dict) -> dict[int, float]:
    return {int(s): v for s, v in record["checkpoints"].items()}
