"""One rule per boundary: the checks every entry point applies to values that come from outside.

Each raises a ValueError naming the input (``what``: a flag, a config key, a file) and what was expected,
so that `soe.errors.run_entry` prints it on one line. Kept free of everything but torch and the standard
library, so that any layer may use it.

- devices: 'cpu', 'cuda[:i]' (only if this torch sees that GPU), 'mps' (only if available);
- seeds: integers in [0, 2⁶³ − 1] (what torch.manual_seed and numpy accept);
- numbers written as text: Python's int()/float() syntax without '_' separators ('1_0' is not 10);
- temperatures: 0 (greedy) or at least `MIN_TEMPERATURE` (1e-45 divides logits into inf, then NaN);
- token counts: at most `MAX_NEW_TOKENS`;
- tensors a result is made of: finite (a merge or a model of NaNs is refused, naming the tensor);
- mappings read from JSON or YAML: no key twice (the last one would silently win).
"""

from __future__ import annotations

import math
import numbers

MAX_SEED = 2**63 - 1
MIN_TEMPERATURE = 1e-4
MAX_NEW_TOKENS = 1_000_000


def strict_number(text: str, kind=float, what: str = "value"):
    """``text`` as ``kind`` (int or float), refusing '_' digit separators and, for int, anything but digits."""
    s = str(text).strip()
    if "_" in s:
        raise ValueError(
            f"{what}={text!r}: '_' is not allowed in a number; expected "
            f"{'an integer' if kind is int else 'a number'} such as {'10' if kind is int else '0.5'}"
        )
    try:
        return kind(s)
    except (TypeError, ValueError):
        raise ValueError(f"{what}={text!r} is not {'an integer' if kind is int else 'a number'}") from None


def check_seed(seed, what: str = "seed") -> int:
    """A seed: an integer in [0, 2⁶³ − 1] (booleans refused)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{what}={seed!r}: expected an integer in [0, 2**63 - 1]")
    return int(seed)


def check_temperature(t, what: str = "temperature") -> float:
    """0 (greedy) or a finite number ≥ MIN_TEMPERATURE."""
    if (
        isinstance(t, bool)
        or not isinstance(t, numbers.Real)
        or not math.isfinite(t)
        or not (t == 0 or t >= MIN_TEMPERATURE)
    ):
        raise ValueError(f"{what}={t!r}: expected 0 (greedy) or a number ≥ {MIN_TEMPERATURE:g}")
    return float(t)


def check_token_count(n, what: str = "max_new_tokens", allow_zero: bool = False) -> int:
    """A number of tokens to generate: an integer in [1 (or 0), MAX_NEW_TOKENS]."""
    low = 0 if allow_zero else 1
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not low <= n <= MAX_NEW_TOKENS:
        raise ValueError(f"{what}={n!r}: expected an integer in [{low}, {MAX_NEW_TOKENS:,}]")
    return int(n)


def check_device(device, what: str = "--device"):
    """A torch device this process can use: cpu, cuda[:i] (that GPU exists), mps (available). None: the
    default (cuda if available, else cpu)."""
    import torch

    if device is None or device == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        dev = device
    else:
        try:
            dev = torch.device(str(device))
        except (RuntimeError, ValueError):
            raise ValueError(f"{what} {device!r} is not a device; expected cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(
                f"{what} {device!r}: this torch sees no CUDA device (CPU-only build or no GPU); expected cpu"
            )
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"{what} {device!r}: only {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
        return dev
    if dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"{what} {device!r}: MPS is not available here; expected cpu")
        return dev
    raise ValueError(f"{what} {device!r}: unsupported device type {dev.type!r}; expected cpu, cuda, cuda:N or mps")


def check_finite(tensors, what: str) -> None:
    """Refuse a result holding NaN or inf, naming the first tensor that does. ``tensors``: {name: tensor}."""
    import torch

    for name, t in tensors.items():
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(
                f"{what}: tensor {name} has {bad} non-finite value(s) (NaN or inf); refusing to write "
                "or use a model that is not finite"
            )


def no_duplicate_keys(where: str):
    """A json ``object_pairs_hook`` that refuses a key given twice, naming it and ``where``."""

    def hook(pairs):
        out = {}
        for k, v in pairs:
            if k in out:
                raise ValueError(f"{where}: key {k!r} appears twice; expected each key once")
            out[k] = v
        return out

    return hook


def yaml_loader(where: str):
    """A yaml SafeLoader class that refuses a mapping key given twice (PyYAML keeps the last one silently)."""
    import yaml

    class Strict(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    key = self.construct_object(key_node, deep=deep)
                    try:
                        dup = key in seen
                    except TypeError:
                        continue
                    if dup:
                        line = key_node.start_mark.line + 1
                        raise ValueError(f"{where}: key {key!r} appears twice (line {line}); expected each key once")
                    seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return Strict


def safe_load_yaml(text: str, where: str):
    """yaml.safe_load that refuses duplicate keys (a ValueError naming ``where``)."""
    import yaml

    return yaml.load(text, Loader=yaml_loader(where))  # noqa: S506 (a SafeLoader subclass)


def arg_type(kind, ok, expected: str):
    """An argparse ``type=`` parsing strictly (`strict_number`) and refusing values outside a range, naming it
    (argparse names the flag)."""
    import argparse

    def parse(text: str):
        try:
            v = strict_number(text, kind)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'}; expected {expected}"
            ) from None
        if not (math.isfinite(v) and ok(v)):
            raise argparse.ArgumentTypeError(f"{text} is out of range; expected {expected}")
        return v

    parse.__name__ = expected  # argparse shows it in "invalid <name> value" messages
    return parse


def device_arg(text: str) -> str:
    """An argparse ``type=`` for --device (`check_device`)."""
    import argparse

    try:
        check_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


positive_int = arg_type(int, lambda v: v > 0, "an integer ≥ 1")
nonneg_int = arg_type(int, lambda v: v >= 0, "an integer ≥ 0")
positive_float = arg_type(float, lambda v: v > 0, "a number > 0")
nonneg_float = arg_type(float, lambda v: v >= 0, "a number ≥ 0")
open_fraction = arg_type(float, lambda v: 0 < v < 1, "a fraction in (0, 1)")
weight_floor = arg_type(float, lambda v: 0 <= v < 1, "a weight in [0, 1)")
seed_arg = arg_type(int, lambda v: 0 <= v <= MAX_SEED, "an integer in [0, 2**63 - 1]")
token_count_arg = arg_type(int, lambda v: 1 <= v <= MAX_NEW_TOKENS, f"an integer in [1, {MAX_NEW_TOKENS:,}]")
temperature_arg = arg_type(
    float, lambda v: v == 0 or v >= MIN_TEMPERATURE, f"0 (greedy) or a number ≥ {MIN_TEMPERATURE:g}"
)


def check_fields(values: dict, cls, where: str) -> dict:
    """The entries of ``values`` that are fields of dataclass ``cls``, each checked against its annotation
    (int, float, bool, str, optionally '| None'): a string '1e-5' for a float, 2.5 or True for an int are refused
    naming ``where`` and the key. Returns them, ints widened to float where a float is expected."""
    import dataclasses

    out = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        v, ann = values[f.name], str(f.type)
        if v is None and "None" in ann:
            out[f.name] = v
            continue
        base = ann.split("|")[0].strip()
        ok = {
            "bool": lambda x: isinstance(x, bool),
            "int": lambda x: isinstance(x, int) and not isinstance(x, bool),
            "float": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x),
            "str": lambda x: isinstance(x, str),
        }.get(base)
        if ok is not None and not ok(v):
            raise ValueError(f"{where}: {f.name}={v!r} ({type(v).__name__}); expected {base}")
        out[f.name] = float(v) if base == "float" else v
    return out


def check_out_parent(out, what: str = "output") -> None:
    """The nearest existing ancestor of a new output path ``out`` is a writable directory (else the error would
    name a hidden temporary path, and come after all the work)."""
    import os
    from pathlib import Path

    p = Path(out).absolute().parent
    while not os.path.lexists(p):
        p = p.parent
    if not p.is_dir():
        raise NotADirectoryError(f"{what} {out}: {p} is a file, not a directory; expected a path in a directory")
    if not os.access(p, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {out}: directory {p} is not writable; expected a writable location")


def check_out_file(out, flag: str, inputs: dict | None = None) -> None:
    """An output file named by ``flag`` (checked before any work): not a directory nor a special file, in a
    writable directory, and not replacing a file of an input (``inputs``: {flag: path}, a file or a directory)."""
    import os
    from pathlib import Path

    p = Path(out)
    if p.is_dir():
        raise IsADirectoryError(f"{flag} {out} is a directory; expected a file name")
    if os.path.lexists(p) and not p.is_file():
        raise FileExistsError(f"{flag} {out} exists and is not a regular file; expected a file name")
    check_out_parent(p, flag)
    if not p.exists():
        return
    real = p.resolve()
    for name, path in (inputs or {}).items():
        if path and os.path.exists(path) and (real == Path(path).resolve() or Path(path).resolve() in real.parents):
            raise FileExistsError(
                f"{flag} {out} would replace {'' if real == Path(path).resolve() else 'a file of '}"
                f"the input {name} {path}; expected a new file name or one outside the inputs"
            )
