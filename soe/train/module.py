"""LightningModule that trains a Soup-of-Experts (or, with n_experts = 0, the dense baseline).

Each training step takes one (h, tokens) batch, instantiates Θ(h) = S + Σ_j α_j(h)·E_j, computes the
next-token loss and backprops into S, E and φ. Validation evaluates each domain's windows with the
specialist at that domain's one-hot h (``loss/val/<domain>``) and with the model at the natural
prior h (``loss/val_prior/<domain>``, and the token-weighted ``loss/val_prior/mixture``).
"""

from __future__ import annotations

import time
from dataclasses import asdict

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn

from soe.core.model import ModelConfig
from soe.core.soup import SoupConfig, SoupOfExperts
from soe.core.weights import check_h
from soe.train import resume
from soe.train.bank_ddp import BankDDP, ignored_names
from soe.train.bank_fsdp import BankFSDP
from soe.train.bank_update import BankAdamW
from soe.train.optim import OptimConfig, lr_lambda, make_optimizer


def _as(cls, value):
    """Accept a dataclass or its dict (checkpoints store plain dicts so they load with weights_only)."""
    if value is None:
        return cls()
    return value if isinstance(value, cls) else cls(**value)


class SoupModule(L.LightningModule):
    def __init__(
        self,
        net: ModelConfig = ModelConfig(),
        soup: SoupConfig = SoupConfig(),
        optim: OptimConfig = OptimConfig(),
        n_domains: int = 1,
        domain_names: list[str] | None = None,
        prior: list[float] | None = None,
        tokenizer_sha256: str | None = None,
        corpus_lock_id: str | None = None,
    ):
        """
        Args:
            net: the dense model's shape (shared by S, experts and specialists).
            soup: bank size, router and souped tensors; n_experts = 0 is the dense baseline.
            optim: optimizer and schedule.
            n_domains: k (linked from the data by train.py).
            domain_names: domain names in h's order (linked from the data).
            prior: natural token-count mixture over domains (linked from the data).
            tokenizer_sha256: hash of the tokenizer the model is trained with (linked from the data).
            corpus_lock_id: id of the package versions the training text came from (linked from the data's
                meta.json; None for data without a corpus lock): checkpoints name the corpus they saw.
        """
        super().__init__()
        self.net_cfg, self.soup_cfg, self.optim_cfg = (
            _as(ModelConfig, net),
            _as(SoupConfig, soup),
            _as(OptimConfig, optim),
        )
        self.domain_names = list(domain_names or [f"domain{i}" for i in range(n_domains)])
        if len(self.domain_names) != n_domains:
            raise ValueError(f"domain_names has {len(self.domain_names)} entries, n_domains={n_domains}")
        prior_t = check_h(prior if prior is not None else [1.0] * n_domains, n_domains, "prior")
        # Plain dicts in hparams: checkpoints then load with torch.load(weights_only=True).
        self.save_hyperparameters(
            {
                "net": asdict(self.net_cfg),
                "soup": asdict(self.soup_cfg),
                "optim": asdict(self.optim_cfg),
                "n_domains": n_domains,
                "domain_names": self.domain_names,
                "prior": prior_t.tolist(),
                "tokenizer_sha256": tokenizer_sha256,
                "corpus_lock_id": corpus_lock_id,
            }
        )
        self.soup = SoupOfExperts(self.net_cfg, n_domains, self.soup_cfg)
        self.register_buffer("prior_h", prior_t, persistent=False)
        self._t_last: float | None = None
        self._sharded = False  # set by configure_model under ModelParallelStrategy (FSDP2)
        if self.optim_cfg.bank_update == "factored":  # DDP must not wait for E.grad (never built): G is reduced
            self._ddp_params_and_buffers_to_ignore = ignored_names("soup.", self.soup)  # by BankDDP instead
        object.__setattr__(self, "_compiled", None)  # torch.compile wrapper, hidden from nn.Module

    # ------------------------------------------------------------------ training
    def training_step(self, batch, batch_idx):
        h, tokens = batch["h"], batch["tokens"]  # h: (k,) or (M, k) with data.h_per_step = M; tokens: (B, T+1)
        # Instantiate inside the soup's forward so sharding wrappers (FSDP2) gather parameters first.
        experts = self.global_step >= self.soup_cfg.experts_from_step  # seed phase: S alone before that step
        _, loss, alpha = self._forward(tokens[:, :-1], h, tokens[:, 1:], experts, return_alpha=True)
        self.log("loss/train", loss, prog_bar=True)
        if alpha is not None and self.global_step % max(1, self.trainer.log_every_n_steps) == 0:
            a = alpha.detach().reshape(-1, self.soup.n)  # α = φ(h) of this step's M h's: (M, n)
            self.log_dict(
                {
                    "alpha/mean": a.mean(),
                    "alpha/std": a.std() if a.numel() > 1 else a.new_zeros(()),
                    "alpha/abs_max": a.abs().max(),
                    "alpha/norm": a.norm(dim=-1).mean(),
                }
            )
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        now = time.perf_counter()
        if self._t_last is not None:
            tps = batch["tokens"][:, :-1].numel() * self.trainer.world_size / (now - self._t_last)
            self.log("throughput/tokens_per_s", tps, prog_bar=True)
        self._t_last = now
        self.log("lr/shared", self.lr_schedulers().get_last_lr()[0])

    def _forward(self, x, h, y, experts: bool = True, return_alpha: bool = False):
        """(logits, loss) of Θ(h) on x: (B, T), with α last when ``return_alpha`` (SoupOfExperts.forward);
        compiled (instantiate + dense model) when optim.compile. experts=False: S alone (the seed phase)."""
        if self.optim_cfg.compile:
            if self._compiled is None:
                object.__setattr__(self, "_compiled", torch.compile(self.soup))
            return self._compiled(x, h=h, targets=y, experts=experts, return_alpha=return_alpha)
        return self.soup(x, h=h, targets=y, experts=experts, return_alpha=return_alpha)

    def on_fit_start(self):
        if "bf16" in str(self.trainer.precision) and self.device.type == "cpu":
            rank_zero_warn(
                "bf16 on CPU is usually slower than fp32 (no AMX here) and less accurate; "
                "use trainer.precision=32-true on CPU and bf16-mixed on GPU"
            )

    def configure_model(self):
        """Shard S, the bank and φ over the data-parallel mesh (FSDP2) under ModelParallelStrategy.

        Each flat buffer is split along dim 0 (the bank: by experts), so a rank holds ≈ 1/world of
        the parameters, gradients and AdamW state; the forward all-gathers them for one step. With
        bank_update=factored the bank's rows are updated from the all-reduced G (soe/train/bank_fsdp.py)."""
        mesh = self.device_mesh
        if mesh is None or self._sharded:
            return
        from torch.distributed.fsdp import fully_shard

        dp = mesh["data_parallel"] if mesh.mesh_dim_names and "data_parallel" in mesh.mesh_dim_names else mesh
        if mesh.mesh_dim_names and "tensor_parallel" in mesh.mesh_dim_names and mesh["tensor_parallel"].size() > 1:
            raise ValueError(
                f"tensor_parallel_size={mesh['tensor_parallel'].size()}: the soup supports data "
                "parallelism only; set ModelParallelStrategy(tensor_parallel_size=1)"
            )
        fully_shard(self.soup, mesh=dp)
        self._sharded = True

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self):
        self._val_sums: dict[str, list[float]] = {}
        self._val_cache: tuple[int, dict, dict] | None = None
        self._t_last = None  # validation time is not training throughput

    def _val_params(self, domain: int):
        if self._val_cache is None or self._val_cache[0] != domain:
            with torch.no_grad():
                onehot = torch.zeros_like(self.prior_h)
                onehot[domain] = 1.0
                spec = self.soup.instantiate(onehot)
                prior = spec if self.soup.n == 0 else self.soup.instantiate(self.prior_h)
            self._val_cache = (domain, spec, prior)
        return self._val_cache[1], self._val_cache[2]

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        tokens = batch["tokens"]
        x, y = tokens[:, :-1], tokens[:, 1:]
        name = self.domain_names[dataloader_idx]
        if self._sharded:  # sharded parameters: instantiate inside the (gathering) forward
            onehot = torch.zeros_like(self.prior_h)
            onehot[dataloader_idx] = 1.0
            l_spec = self.soup(x, h=onehot, targets=y)[1]
            l_prior = l_spec if self.soup.n == 0 else self.soup(x, h=self.prior_h, targets=y)[1]
        else:
            spec, prior = self._val_params(dataloader_idx)
            _, l_spec = self.soup(x, targets=y, params=spec)
            l_prior = l_spec if prior is spec else self.soup(x, targets=y, params=prior)[1]
        for key, val in ((f"loss/val/{name}", l_spec), (f"loss/val_prior/{name}", l_prior)):
            s = self._val_sums.setdefault(key, [0.0, 0])
            s[0] += float(val) * x.shape[0]
            s[1] += x.shape[0]

    def on_validation_epoch_end(self):
        metrics = {k: s / n for k, (s, n) in self._val_sums.items() if n}
        prior_terms = [
            (self.prior_h[i].item(), metrics.get(f"loss/val_prior/{d}")) for i, d in enumerate(self.domain_names)
        ]
        if all(v is not None for _, v in prior_terms):
            metrics["loss/val_prior/mixture"] = sum(w * v for w, v in prior_terms)
            spec = [metrics[f"loss/val/{d}"] for d in self.domain_names]
            metrics["loss/val/specialist_mean"] = sum(spec) / len(spec)
        if metrics:
            self.log_dict(metrics, add_dataloader_idx=False, sync_dist=True)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse to resume a checkpoint of another model or data stream (train.py checks this before
        fitting; this also covers Trainer.fit(ckpt_path=...) from Python)."""
        dm = self._trainer.datamodule if self._trainer is not None else None
        now = resume.settings(dict(self.hparams), dict(dm.hparams) if dm is not None else {})
        fitting = dm is not None and self._trainer.state.fn == TrainerFn.FITTING  # the training stream matters
        diffs = resume.differences(now, checkpoint, fitting)
        if diffs:
            raise ValueError(resume.refusal(diffs, "the checkpoint"))
        if not self._sharded:  # same settings, other tensors (an edited or foreign checkpoint)
            own = self.state_dict()
            for name, t in checkpoint.get("state_dict", {}).items():
                if name in own and tuple(own[name].shape) != tuple(t.shape):
                    raise ValueError(
                        f"the checkpoint's {name} has shape {tuple(t.shape)}, the model's "
                        f"{tuple(own[name].shape)}: it was not written by this model"
                    )

    # ------------------------------------------------------------------ optimizer
    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Lightning's clipping, except that a factored bank (E.grad None) counts through its factors."""
        if not isinstance(optimizer, BankAdamW) or not gradient_clip_val:
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if gradient_clip_algorithm is not None and gradient_clip_algorithm == "value":  # Lightning's str enum
            optimizer.clip_grad_value_(float(gradient_clip_val))
        else:
            optimizer.clip_grad_norm_(float(gradient_clip_val))

    def configure_optimizers(self):
        o = self.optim_cfg
        if o.bank_update == "factored":  # an fp16 GradScaler would unscale E.grad only (never built)
            if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
                raise ValueError(
                    f"model.optim.bank_update=factored does not support trainer.precision="
                    f"{self.trainer.precision} (gradient scaler); use bf16-mixed or 32-true"
                )
        opt = make_optimizer(self.soup, o)
        if o.bank_update == "factored":
            wrapped = self.trainer.strategy.model  # DDP(self) once DDPStrategy has wrapped it (before this hook)
            if self._sharded:  # FSDP2: G all-reduced, each rank updates its rows of E, m, v
                opt.reducer = BankFSDP.attach(self.soup, opt)
            elif isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
                opt.reducer = BankDDP.attach(wrapped, self.soup)  # all-reduces G, never ∂E
            elif self.trainer.world_size > 1:
                raise ValueError(
                    f"model.optim.bank_update=factored supports DDPStrategy and ModelParallelStrategy "
                    f"(FSDP2) only for several processes (got {type(self.trainer.strategy).__name__}); "
                    "or use =dense"
                )
        total = self.trainer.max_steps
        if total is None or total <= 0:
            raise ValueError(f"trainer.max_steps={total}: the cosine schedule needs a positive max_steps")
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_lambda(step, o.warmup_steps, total, o.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
