"""The request side of the OpenAI-compatible API: parsing and validating ``POST /v1/completions`` bodies.

Every refusal is an `ApiError` carrying its HTTP status and the field (``param``) it is about; the app answers it
as OpenAI does, ``{"error": {"message", "type", "param", "code"}}``, which the official client raises as
``openai.BadRequestError`` (400), ``NotFoundError`` (404) etc. with that body.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from soe.checks import MIN_TEMPERATURE, no_duplicate_keys

# Fields of OpenAI's completions API this server accepts; unknown fields are refused (as OpenAI does), so a
# misspelt option is an error, not silently ignored.
FIELDS = {
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stream",
    "stream_options",
    "n",
    "echo",
    "stop",
    "logprobs",
    "best_of",
    "suffix",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "user",
    "weights",
    "top_k",
}
# Accepted only at their neutral value (their feature is not implemented).
NEUTRAL = {
    "n": (None, 1),
    "best_of": (None, 1),
    "stop": (None, [], ""),
    "logprobs": (None,),
    "suffix": (None, ""),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "logit_bias": (None, {}),
}
MAX_SEED = 2**63 - 1


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, f"{param}: {message}", param, code)


@dataclass
class CompletionRequest:
    model: str
    prompt: str
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int | None
    seed: int | None
    stream: bool
    include_usage: bool
    echo: bool
    weights: dict | None


def _int(body: dict, name: str, default):
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(name, f"{v!r} is not an integer", "invalid_type")
    return v


def _float(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise bad(name, f"{v!r} is not a number", "invalid_type")
    try:
        v = float(v)
    except OverflowError:  # an integer beyond float's range
        v = math.inf
    if not math.isfinite(v) or v > hi or (v <= lo if lo_open else v < lo):
        raise bad(name, f"{v} is out of range; expected a number in {'(' if lo_open else '['}{lo:g}, {hi:g}]")
    return v


def _bool(body: dict, name: str, default: bool, param: str | None = None) -> bool:
    v = body.get(name, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad(param or name, f"{v!r} is not a boolean", "invalid_type")
    return v


def _text(v, name: str) -> str:
    """A string the tokenizer and the JSON answer can take: valid Unicode (JSON's \\ud800 escapes allow a lone
    surrogate, which has no UTF-8 form)."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        raise bad(name, f"not valid Unicode ({e.reason} at character {e.start})", "invalid_value") from None
    return v


def _neutral(v, allowed) -> bool:
    """Is v null or one of the neutral values (numbers compared as numbers, others by type and value)?"""
    if v is None:
        return True
    num = isinstance(v, (int, float)) and not isinstance(v, bool)
    return any(
        (num and v == a) if isinstance(a, int) else (type(v) is type(a) and v == a) for a in allowed if a is not None
    )


def parse_json(raw: bytes):
    try:
        return json.loads(raw, object_pairs_hook=no_duplicate_keys("body"))  # {"law": 1, "law": 0}: refused
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"body: malformed JSON ({e})", "body", "invalid_json") from None
    except RecursionError:
        raise ApiError(400, "body: JSON nested too deeply", "body", "invalid_json") from None
    except (
        ValueError
    ) as e:  # a key twice; an integer of more than 4300 digits (sys.int_info.str_digits_check_threshold)
        msg = str(e).removeprefix("body: ")
        raise ApiError(
            400, f"body: {msg}" if "appears twice" in msg else f"body: malformed JSON ({msg})", "body", "invalid_json"
        ) from None


def parse_completion(raw: bytes, max_seq_len: int) -> CompletionRequest:
    """The body of ``POST /v1/completions`` → a validated request (the prompt's length is checked after
    tokenisation, by the caller)."""
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise ApiError(400, f"body: expected a JSON object, got {type(body).__name__}", "body", "invalid_type")
    for name in body:
        if name not in FIELDS:
            raise bad(
                name, f"unrecognized request argument (accepted: {', '.join(sorted(FIELDS))})", "unknown_parameter"
            )
    for name, ok in NEUTRAL.items():
        if not _neutral(body.get(name), ok):
            neutral = " or ".join(json.dumps(a) for a in ok if a is not None)
            raise bad(
                name,
                f"{json.dumps(body[name])} is not supported by this server (only "
                f"{neutral + ' or ' if neutral else ''}null)",
                "unsupported_value",
            )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad(
            "model",
            "required: the name of a specialist (GET /v1/models lists them)",
            "missing" if model is None else "invalid_type",
        )
    _text(model, "model")
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # the client's list form of one prompt
    if not isinstance(prompt, str):
        raise bad(
            "prompt", "expected a string (one prompt per request; token-id prompts are not supported)", "invalid_type"
        )
    _text(prompt, "prompt")
    max_tokens = _int(body, "max_tokens", 16)
    if max_tokens <= 0 or max_tokens > max_seq_len:
        raise bad(
            "max_tokens",
            f"{max_tokens} is out of range; expected 1 ≤ max_tokens ≤ {max_seq_len} (the model's context length)",
        )
    top_k = _int(body, "top_k", 0)
    if top_k < 0:
        raise bad("top_k", f"{top_k} is negative; expected ≥ 0 (0: all tokens)")
    seed = body.get("seed")
    if seed is not None:
        seed = _int(body, "seed", None)
        if not 0 <= seed <= MAX_SEED:
            raise bad("seed", f"{seed} is out of range; expected 0 ≤ seed < 2^63")
    opts = body.get("stream_options")
    if opts is not None and (not isinstance(opts, dict) or set(opts) - {"include_usage"}):
        raise bad("stream_options", f'{opts!r}: expected {{"include_usage": true|false}}')
    include_usage = _bool(opts or {}, "include_usage", False, "stream_options.include_usage")
    weights = body.get("weights")
    if weights is not None and not isinstance(weights, dict):
        raise bad("weights", f"expected an object {{domain: weight}}, got {type(weights).__name__}", "invalid_type")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise bad("user", "expected a string", "invalid_type")
    if user is not None:
        _text(user, "user")
    temperature = _float(body, "temperature", 1.0, 0.0, 2.0)
    if 0 < temperature < MIN_TEMPERATURE:  # logits / temperature would overflow (soe generate's floor too)
        raise bad(
            "temperature", f"{temperature:g} is too small; expected 0 (greedy) or a number in [{MIN_TEMPERATURE:g}, 2]"
        )
    return CompletionRequest(
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=_float(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        top_k=top_k or None,
        seed=seed,
        stream=_bool(body, "stream", False),
        include_usage=include_usage,
        echo=_bool(body, "echo", False),
        weights=weights,
    )
