"""LoRA on a specialist through ``peft`` (the standard), and reading the weights back out.

A specialist is our `LlamaLM`, whose linear layers carry Hugging Face names, so peft's
`inject_adapter_in_model` adds adapters in place to the projections named in `LoRA.targets`; only the
adapters train. `merged_params` gives the dense weights with the adapters folded in (W + s·B·A, the same
fold peft's ``merge`` does), under the model's own names, so a LoRA fine-tune exports like any specialist;
`adapter_state` gives the adapters alone under peft's file names, for an adapter kept beside its base.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from soe.core.model import LlamaLM

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoRA:
    rank: int = 8
    """Rank r of each adapter B·A."""
    alpha: float = 16.0
    """Scale numerator: the update is (alpha / rank)·B·A."""
    targets: tuple[str, ...] = TARGETS
    """Linear layers that get an adapter (module names' last part)."""

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha <= 0:
            raise ValueError(f"LoRA rank {self.rank} / alpha {self.alpha}: expected rank ≥ 1 and alpha > 0")
        bad = set(self.targets) - set(TARGETS)
        if bad or not self.targets:
            raise ValueError(f"LoRA targets {sorted(bad) or '[]'}: expected a non-empty subset of {', '.join(TARGETS)}")

    def peft_config(self):
        try:
            from peft import LoraConfig
        except ImportError as e:
            raise ImportError(f"LoRA needs peft ({e}); install soe[merge]") from None
        return LoraConfig(
            r=self.rank, lora_alpha=self.alpha, target_modules=list(self.targets), lora_dropout=0.0, bias="none"
        )


def add_lora(model: LlamaLM, spec: LoRA) -> LlamaLM:
    """Inject adapters in place; freeze everything but them. Returns ``model``."""
    from peft import inject_adapter_in_model

    inject_adapter_in_model(spec.peft_config(), model)
    for name, p in model.named_parameters():
        p.requires_grad = "lora_" in name
    return model


def _lora_layers(model):
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


@torch.no_grad()
def merged_params(model: LlamaLM) -> dict[str, torch.Tensor]:
    """Dense HF-named weights with any adapters folded in (the model itself is left unmerged)."""
    layers = _lora_layers(model)
    for m in layers:
        m.merge()
    try:
        return {
            n.replace(".base_layer", ""): p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n
        }
    finally:
        for m in layers:
            m.unmerge()


def adapter_state(model: LlamaLM) -> dict[str, torch.Tensor]:
    """The adapters under peft's saved names (``base_model.model.<module>.lora_A.weight``)."""
    from peft import get_peft_model_state_dict

    return {f"base_model.model.{k}": v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def adapter_config(spec: LoRA, base: str) -> dict:
    """adapter_config.json as peft writes it, for ``PeftModel.from_pretrained(model, dir)``."""
    cfg = spec.peft_config().to_dict()
    cfg.update(base_model_name_or_path=base, task_type="CAUSAL_LM", inference_mode=True)
    cfg["target_modules"] = sorted(cfg["target_modules"])
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.items()} | {"soe_lora": asdict(spec)}
