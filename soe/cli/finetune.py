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

from soe.checks import open_fraction, positive_float, positive_int, seed_arg
from soe.cli.types import common


def add_parser(sub) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a specialist (full or LoRA), geometric checkpoints",
        description=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("source", nargs="?", help="specialist directory, checkpoint (with --weights), or CKPT@WEIGHTS")
    p.add_argument(
        "--stop-for-merge",
        metavar="CONFIG",
        default=None,
        help="choose each run's checkpoint for the merge of this soe merge config (no SOURCE/--texts)",
    )
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
    p.add_argument(
        "--lora-rank", type=positive_int, default=None, help="LoRA (peft) of this rank instead of full fine-tuning"
    )
    p.add_argument("--lora-alpha", type=positive_float, default=16.0)
    p.add_argument("--lora-targets", default=None, help="comma list of projections (default: all seven)")
    p.add_argument("--keep-adapter", action="store_true", help="LoRA: keep the adapter instead of merging it")
    p.add_argument("--format", choices=("hf", "soe"), default="hf")
    p.add_argument("--overwrite", action="store_true", help="replace a previous soe finetune run directory")
    common(p)


def cmd_finetune(a) -> None:
    from soe.specialists import lora as L
    from soe.specialists.finetune_run import run_finetune

    if a.stop_for_merge:
        if a.source or a.texts:
            raise ValueError("--stop-for-merge takes the runs from its config's models; drop SOURCE and --texts")
        from soe.merging.stopping import stop_for_merge

        stop_for_merge(a.stop_for_merge, a.out, overwrite=a.overwrite)
        return
    if not a.source or not a.texts:
        raise ValueError("soe finetune needs SOURCE and --texts (or --stop-for-merge CONFIG)")
    spec = (
        L.LoRA(a.lora_rank, a.lora_alpha, tuple(a.lora_targets.split(",")) if a.lora_targets else L.TARGETS)
        if a.lora_rank
        else None
    )
    run_finetune(
        a.source,
        a.texts,
        a.out,
        weights=a.weights,
        text_field=a.text_field,
        max_docs=a.max_docs,
        steps=a.steps,
        lr=a.lr,
        batch_size=a.batch_size,
        warmup=a.warmup,
        holdout=a.holdout,
        eval_every=a.eval_every,
        patience=a.patience,
        first_checkpoint=a.first_checkpoint,
        seed=a.seed,
        lora=spec,
        keep_adapter=a.keep_adapter,
        fmt=a.format,
        overwrite=a.overwrite,
        data=a.data,
        device=a.device,
    )
