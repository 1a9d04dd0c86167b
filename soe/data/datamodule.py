"""Memory-mapped per-domain shards → (h, tokens) batches, as a LightningDataModule.

Training batches form an endless stream indexed by step: batch t is a pure function of
(seed, t, rank) — one generator samples h ~ π, another B windows from mix(h). The module's
checkpointed state is the index of the next batch the *model* consumes (recorded when a batch
reaches the training step, not when the loader prefetches it), so a resumed run sees exactly
the batches an uninterrupted run would have seen.

Validation: per domain, ``val_windows`` windows of ``val.bin`` chosen by `soe.data.windows.eval_windows`
(the rule every reported loss uses: deterministic, the same for every run and model), one dataloader
per domain.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from soe.data.mixture import MetaDistribution, MixtureConfig, MixtureSampler
from soe.data.shards import Meta, check_tokenizer, load_meta, open_shard
from soe.data.windows import eval_windows


class _TrainStream(IterableDataset):
    def __init__(self, dm: "SoupDataModule", start: int):
        self.dm, self.start = dm, start

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        # Workers take interleaved steps; DataLoader returns them round-robin, i.e. in step order.
        step = self.start + wid
        while True:
            yield self.dm.train_batch(step)
            step += nw


class SoupDataModule(L.LightningDataModule):
    def __init__(
        self,
        data_dir: str = "data/fixture",
        seq_len: int = 256,
        batch_size: int = 8,
        seed: int = 1234,
        mixture: MixtureConfig = MixtureConfig(),
        val_windows: int = 32,
        val_batch_size: int = 16,
        vocab_size: int | None = None,
        num_workers: int = 0,
        rank_h: str = "shared",
        h_per_step: int = 1,
    ):
        """
        Args:
            data_dir: prepared directory (meta.json + <domain>/{train,val}.bin), see soe/data/shards.py.
            seq_len: tokens per training sequence (windows hold seq_len+1 tokens for the shift).
            batch_size: sequences per training step (per process).
            seed: data seed; batch t uses a generator seeded by (seed, t[, rank]).
            mixture: π, the meta-distribution of domain weights h (fixed_h for dense baselines).
            val_windows: at most this many validation windows per domain (soe.data.windows.eval_windows).
            val_batch_size: sequences per validation batch.
            vocab_size: the model's vocabulary; shards with another vocab_size are refused.
            num_workers: DataLoader worker processes for the training stream.
            rank_h: with several processes, 'shared' (all ranks use the same h per step) or
                'per_rank' (each rank samples its own h).
            h_per_step: M, the number of independent h ~ π per training batch: the batch_size sequences
                form M equal groups, group m drawn from mix(h_m) and run by Θ(h_m) (batch['h'] is then
                (M, k)). Every optimizer step then averages M mixtures instead of following one skewed
                h (see experiments/RECIPE.md); the M models come from one GEMM (speed vs accumulation: bench/RESULTS.md).
        """
        super().__init__()
        mixture = mixture if isinstance(mixture, MixtureConfig) else MixtureConfig(**(mixture or {}))
        # Plain values only (checkpoints load with weights_only=True); records where the data lives, as given
        # and absolute with the working directory (a relative data_dir means nothing elsewhere).
        self.save_hyperparameters(
            {
                "data_dir": str(data_dir),
                "seq_len": seq_len,
                "batch_size": batch_size,
                "seed": seed,
                "mixture": asdict(mixture),
                "rank_h": rank_h,
                "h_per_step": h_per_step,
                "data_dir_resolved": str(Path(data_dir).resolve()),
                "trained_in": os.getcwd(),
            }
        )
        self.data_dir = Path(data_dir)
        try:
            self.meta: Meta = load_meta(self.data_dir)
            check_tokenizer(self.meta, self.data_dir, expected_vocab=vocab_size)
        except (OSError, ValueError) as e:
            raise type(e)(f"data.data_dir={data_dir}: {e}") from e
        if rank_h not in ("shared", "per_rank"):
            raise ValueError(f"data.rank_h={rank_h!r}; expected 'shared' or 'per_rank'")
        for name, v in (
            ("seq_len", seq_len),
            ("batch_size", batch_size),
            ("val_windows", val_windows),
            ("val_batch_size", val_batch_size),
        ):
            if v <= 0:
                raise ValueError(f"data.{name}={v} must be positive")
        if h_per_step <= 0 or batch_size % h_per_step:
            raise ValueError(
                f"data.h_per_step={h_per_step} must be positive and divide data.batch_size={batch_size} "
                "(each h gets batch_size / h_per_step sequences)"
            )
        self.h_per_step = h_per_step
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.val_windows, self.val_batch_size, self.num_workers, self.rank_h = (
            val_windows,
            val_batch_size,
            num_workers,
            rank_h,
        )
        self.pi = MetaDistribution(mixture, self.num_domains, self.meta.prior("train"))
        self._next_index = 0  # next training batch the model will consume
        self._sampler: MixtureSampler | None = None

    # Facts the model needs (linked into the LightningModule by train.py).
    @property
    def num_domains(self) -> int:
        return len(self.meta.domains)

    @property
    def domain_names(self) -> list[str]:
        return list(self.meta.domains)

    @property
    def prior(self) -> list[float]:
        return self.meta.prior("train").tolist()

    @property
    def tokenizer_sha256(self) -> str:
        return self.meta.tokenizer_sha256

    @property
    def corpus_lock_id(self) -> str | None:
        return (self.meta.corpus_lock or {}).get("id")

    def setup(self, stage: str | None = None) -> None:
        if self._sampler is None:
            train = [open_shard(self.data_dir, self.meta, d, "train") for d in self.meta.domains]
            try:
                self._sampler = MixtureSampler(train, self.seq_len, self.meta.domains)
            except ValueError as e:
                raise ValueError(f"data.data_dir={self.data_dir} (train.bin), data.seq_len={self.seq_len}: {e}") from e
            self._val = []
            for d in self.meta.domains:
                shard = open_shard(self.data_dir, self.meta, d, "val")
                try:
                    windows = eval_windows(shard, self.seq_len, self.val_windows)
                except ValueError as e:
                    raise ValueError(f"{shard.filename} (domain {d!r}, data.seq_len={self.seq_len}): {e}") from e
                self._val.append(self._in_vocab(windows, shard.filename))

    def _in_vocab(self, tokens: torch.Tensor, where: str) -> torch.Tensor:
        """``tokens``, refused when an id is outside meta.json's vocabulary (corrupt shards would otherwise
        fail deep inside the embedding lookup)."""
        top = int(tokens.max())
        if top >= self.meta.vocab_size:
            raise ValueError(
                f"data.data_dir={self.data_dir}: {where} holds token id {top} >= vocab_size="
                f"{self.meta.vocab_size} of meta.json; the shards are corrupt, re-run data preparation"
            )
        return tokens

    # ------------------------------------------------------------------ training stream
    def _rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def train_batch(self, index: int) -> dict:
        """Batch ``index`` of this rank's stream: {'h': (k,) float32 — (M, k) with h_per_step = M > 1 —,
        'tokens': (B, T+1) int64, 'index': int}.

        h comes from (seed, index) — plus the rank when rank_h='per_rank' — and the sequences from
        (seed, index, rank), so ranks sharing an h still draw different sequences. Group m of the
        batch is rows [m·B/M, (m+1)·B/M), drawn from mix(h_m)."""
        rank = self._rank()
        M = self.h_per_step
        rng_h = np.random.default_rng([self.seed, index] + ([rank] if self.rank_h == "per_rank" else []))
        H = np.stack([self.pi.sample(rng_h) for _ in range(M)])  # (M, k); M = 1 draws exactly as before
        rng = np.random.default_rng([self.seed, index, rank, 1])
        tokens = np.concatenate([self._sampler.sample(h, self.batch_size // M, rng)[0] for h in H])
        h = torch.from_numpy(H.astype(np.float32))
        tokens = self._in_vocab(torch.from_numpy(tokens), f"training batch {index}")
        return {"h": h[0] if M == 1 else h, "tokens": tokens, "index": index}

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(
            _TrainStream(self, self._next_index),
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=False,
        )

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        # Called in consumption order (after any prefetch), so this is what the model has seen.
        if self.trainer is not None and self.trainer.training and "index" in batch:
            self._next_index = int(batch["index"]) + 1
        return batch

    def state_dict(self) -> dict:
        return {"seed": self.seed, "next_index": self._next_index}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed") != self.seed:
            raise ValueError(
                f"checkpoint data seed {state.get('seed')} differs from data.seed={self.seed}; "
                "resuming would not reproduce the run"
            )
        self._next_index = int(state["next_index"])

    # ------------------------------------------------------------------ validation
    def val_dataloader(self) -> list[DataLoader]:
        self.setup()
        loaders = []
        for i, windows in enumerate(self._val):
            items = [{"tokens": w, "domain": i} for w in windows]
            loaders.append(DataLoader(items, batch_size=self.val_batch_size, shuffle=False))
        return loaders
