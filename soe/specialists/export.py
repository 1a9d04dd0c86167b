"""Write and read standalone dense specialists.

Two formats, both a directory holding ``model.safetensors`` with Hugging Face ``LlamaForCausalLM``
parameter names (no renaming: ``soe.core.model`` already uses them) and the prepared data's
``tokenizer.json`` copied byte for byte (so its sha256 still matches the data's meta.json):

    hf   config.json (LlamaConfig), tokenizer_config.json, + soe_specialist.json
         → ``AutoModelForCausalLM.from_pretrained(dir)`` and ``AutoTokenizer.from_pretrained(dir)``
    soe  soe_specialist.json only (ModelConfig, domain weights, provenance); needs no transformers

Exports are atomic: everything is written into a hidden temporary directory beside the target
and renamed into place at the end, so an interrupted export never leaves a half-written model.
Overwriting replaces only a directory this project wrote (`check_out`); an export killed during the
swap is repaired by the next export or `soe.load` (`recover`). Those three live in atomic.py, shared
with merging and fine-tuning (imported from here too: ``from soe.specialists.export import check_out``).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from soe.checks import check_fields, check_finite
from soe.core.model import LlamaLM, ModelConfig
from soe.fileio import read_json
from soe.specialists.adapter import ADAPTER_FILE, fold_adapter
from soe.specialists.atomic import LEFTOVER, SOE_FILE, atomic_dir
from soe.specialists.atomic import check_out as check_out  # re-exported: soe/cli imports it from here
from soe.specialists.atomic import recover as recover  # re-exported: soe/cli imports it from here

FORMATS = ("hf", "soe")
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


def hf_config(cfg: ModelConfig, eos_id: int, bos_id: int | None = None, dtype: str = "float32") -> dict:
    """The config.json of a LlamaForCausalLM equal to ``LlamaLM(cfg)``.

    rope_theta is written both at top level (transformers 4.x) and in rope_parameters (5.x)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ff_dim,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": cfg.init_std,
        "pretraining_tp": 1,
        "use_cache": True,
        "bos_token_id": eos_id if bos_id is None else bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": None,
        "torch_dtype": dtype,
        "dtype": dtype,
    }


HF_TYPES = {
    "vocab_size": int,
    "num_hidden_layers": int,
    "num_attention_heads": int,
    "num_key_value_heads": int,
    "hidden_size": int,
    "intermediate_size": int,
    "max_position_embeddings": int,
    "rms_norm_eps": (int, float),
    "rope_theta": (int, float),
    "tie_word_embeddings": bool,
}
HF_REQUIRED = (
    "vocab_size",
    "num_hidden_layers",
    "num_attention_heads",
    "hidden_size",
    "intermediate_size",
    "max_position_embeddings",
    "rms_norm_eps",
)


def config_from_hf(hf: dict) -> ModelConfig:
    """Inverse of `hf_config` (for HF directories that lack soe_specialist.json)."""
    rope = hf.get("rope_theta", (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    if hf.get("model_type") != "llama":
        raise ValueError(f"config.json has model_type={hf.get('model_type')!r}; expected 'llama'")
    for key, kind in HF_TYPES.items():  # ModelConfig would accept them and fail inside the first forward
        v = hf.get(key)
        if (
            (key in hf or key in HF_REQUIRED)
            and not (v is None and key not in HF_REQUIRED)
            and (isinstance(v, bool) != (kind is bool) or not isinstance(v, kind))
        ):
            raise ValueError(
                f"config.json: {key}={v!r} ({type(v).__name__}); expected "
                f"{'a number' if kind == (int, float) else kind.__name__}"
            )
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        n_layer=hf["num_hidden_layers"],
        n_head=hf["num_attention_heads"],
        n_kv_head=hf.get("num_key_value_heads"),
        d_model=hf["hidden_size"],
        d_ff=hf["intermediate_size"],
        max_seq_len=hf["max_position_embeddings"],
        rope_theta=rope,
        norm_eps=hf["rms_norm_eps"],
        tie_embeddings=hf.get("tie_word_embeddings", True),
    )


def _hf_tokenizer_files(directory: Path, tokenizer_file: Path, eos_id: int, max_len: int) -> None:
    try:
        from tokenizers import Tokenizer
        from transformers import PreTrainedTokenizerFast
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"the 'hf' export format needs transformers ({e}); install soe[hf] or use --format soe"
        ) from e
    eos = Tokenizer.from_file(str(tokenizer_file)).id_to_token(eos_id)
    if eos is None:
        raise ValueError(f"{tokenizer_file}: eos_id={eos_id} from meta.json is not in the tokenizer's vocabulary")
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_file), eos_token=eos, bos_token=eos, model_max_length=max_len
    )
    tok.save_pretrained(str(directory))
    # Keep the data's tokenizer.json byte for byte (its sha256 is what every reader checks), and
    # name the class both transformers 4.x and 5.x resolve.
    shutil.copyfile(tokenizer_file, directory / "tokenizer.json")
    tc_path = directory / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    tc_path.write_text(json.dumps(tc, indent=2) + "\n")


def save_specialist(
    out: str | os.PathLike,
    params: dict[str, torch.Tensor],
    cfg: ModelConfig,
    *,
    tokenizer_file: str | os.PathLike,
    eos_id: int,
    info: dict,
    fmt: str = "hf",
    overwrite: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a dense specialist (HF-named ``params``) to ``out`` atomically; returns ``out``.

    info: provenance stored in soe_specialist.json (domain weights, checkpoint, tokenizer sha256...)."""
    from safetensors.torch import save_file

    if fmt not in FORMATS:
        raise ValueError(f"export format {fmt!r} unknown; expected one of {FORMATS}")
    tokenizer_file = Path(tokenizer_file)
    if not tokenizer_file.is_file():
        raise FileNotFoundError(f"tokenizer file {tokenizer_file} not found (it is copied into the export)")
    expected = set(dict(LlamaLM(cfg).to("meta").named_parameters()))
    if set(params) != expected:
        raise ValueError(
            f"parameters do not match ModelConfig: missing {sorted(expected - set(params))[:3]}, "
            f"unexpected {sorted(set(params) - expected)[:3]}"
        )
    # Own, contiguous copies: safetensors refuses views that share storage.
    tensors = {nm: t.detach().to("cpu", dtype).contiguous().clone() for nm, t in params.items()}
    dname = str(dtype).removeprefix("torch.")
    out = Path(out)
    with atomic_dir(out, overwrite) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        meta = {
            "format_version": FORMAT_VERSION,
            "format": fmt,
            "model": asdict(cfg),
            "dtype": dname,
            "eos_id": eos_id,
            **info,
        }
        (tmp / SOE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if fmt == "hf":
            (tmp / "config.json").write_text(json.dumps(hf_config(cfg, eos_id, dtype=dname), indent=2) + "\n")
            _hf_tokenizer_files(tmp, tokenizer_file, eos_id, cfg.max_seq_len)
        else:
            shutil.copyfile(tokenizer_file, tmp / "tokenizer.json")
    return out


def load_specialist(directory: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[LlamaLM, dict]:
    """Load a directory written by `save_specialist` (either format) or any Llama HF directory with a
    single model.safetensors. Returns (model in eval mode, soe_specialist.json contents or {})."""
    from safetensors.torch import load_file

    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"specialist directory {d} not found")
    for p in (d.absolute(), *d.absolute().parents):  # complete or not, never a finished model: refused
        if LEFTOVER.fullmatch(p.name):
            raise ValueError(
                f"{d}: left by an interrupted export or fine-tuning ({p.name}), not a finished model; "
                f"expected the directory it was writing ({p.parent / p.name[1:].rsplit('.', 1)[0]})"
            )
    info: dict = {}
    if (d / SOE_FILE).is_file():
        where = d / SOE_FILE
        info = read_json(where, "specialist metadata")
    elif (d / "config.json").is_file():
        where = d / "config.json"
        hf = read_json(where, "model config")
    else:
        raise FileNotFoundError(f"{d} holds neither {SOE_FILE} nor config.json: not a specialist directory")
    try:  # valid JSON of the wrong shape, or values ModelConfig refuses
        if where.name == SOE_FILE:
            cfg = ModelConfig(**check_fields(info["model"], ModelConfig, str(where) + ": model"))
        else:
            cfg = config_from_hf(hf)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise ValueError(f"{where}: not a valid specialist description ({type(e).__name__}: {e})") from None
    wpath = d / WEIGHTS_FILE
    if not wpath.is_file():
        raise FileNotFoundError(f"{wpath} not found (sharded HF checkpoints are not supported)")
    try:
        state = load_file(str(wpath), device="cpu")
    except Exception as e:  # safetensors raises its own error type on a truncated or garbage file
        raise ValueError(f"{wpath}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    check_finite(state, str(wpath))
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)  # some HF writers store the tied copy too
    if (d / ADAPTER_FILE).is_file():
        state = fold_adapter(d, {k: v.float() for k, v in state.items()})
    net = LlamaLM(cfg)
    try:
        net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{wpath} does not match its config: {e}") from e
    return net.to(device).eval(), info
