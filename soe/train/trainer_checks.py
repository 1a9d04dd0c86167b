"""train.py's own settings that Lightning checks late, vaguely or not at all: ``seed_everything``,
``trainer.accelerator``, ``trainer.devices`` (and the numbers of steps and nodes written as text).

Checked right after parsing (`check_settings`) and, for what depends on this machine (a GPU, the number of
cores), before the trainer is built (`check_machine`): one error naming the key and what was expected,
instead of numpy's "not in bounds", a raw TypeError for ``--trainer.devices=-5`` on CPU,
``--seed_everything=1_0`` read as 10, or ``--trainer.devices=99`` on a CPU starting 99 training processes.
"""

from __future__ import annotations

import numbers
import os

from soe.checks import strict_number

MAX_SEED = 2**32 - 1  # Lightning's seed_everything seeds numpy, whose seeds are uint32
ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")
NUMERIC = ("seed_everything", "trainer.devices", "trainer.max_steps", "trainer.num_nodes")
DEVICES = "'auto', a number of devices ≥ 1 (-1: every GPU), or a list of GPU indices such as [0, 1]"


def check_argv_numbers(argv) -> None:
    """'--seed_everything=1_0' is refused, not read as 10 (jsonargparse takes Python's int() syntax)."""
    if not isinstance(argv, (list, tuple)):
        return
    for i, arg in enumerate(argv):
        key, eq, value = str(arg).partition("=")
        if not eq and i + 1 < len(argv):
            value = str(argv[i + 1])
        if key.removeprefix("--") in NUMERIC and "_" in value and value.replace("_", "").lstrip("+-").isdigit():
            strict_number(value, int, key)


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_seed(seed) -> None:
    if seed is None or isinstance(seed, bool):  # true: a random seed, false: none
        return
    if not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise ValueError(
            f"seed_everything={seed!r}: expected an integer in [0, {MAX_SEED}] (numpy's seed range), "
            "or true (a random seed) / false (none)"
        )


def check_accelerator(acc) -> str | None:
    """The accelerator's name ('gpu' is 'cuda'), refused if unknown; None for an Accelerator object."""
    if acc is None:
        return "auto"
    if not isinstance(acc, str):
        return None  # an Accelerator instance or class_path: Lightning's own checks
    name = acc.lower()
    if name == "tpu":
        raise ValueError(f"trainer.accelerator={acc!r}: soe does not train on TPUs; expected cpu, cuda or auto")
    if name not in ACCELERATORS:
        raise ValueError(f"trainer.accelerator={acc!r}: expected one of {', '.join(ACCELERATORS)}")
    return "cuda" if name == "gpu" else name


def devices_value(devices, accelerator: str | None):
    """``devices`` as an int or a list of indices ('auto' and None as they are), refusing what no machine takes."""
    if devices is None or accelerator is None or devices == "auto":
        return devices
    value = devices
    if isinstance(value, str):
        s = value.strip()
        try:
            value = [int(x) for x in s.split(",") if x.strip()] if "," in s else int(s)
        except ValueError:
            raise ValueError(f"trainer.devices={devices!r}: expected {DEVICES}") from None
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, list, tuple)):
        raise ValueError(f"trainer.devices={devices!r}: expected {DEVICES}")
    if isinstance(value, numbers.Integral):
        if value < 1 and not (value == -1 and accelerator in ("cuda", "auto")):
            raise ValueError(
                f"trainer.devices={devices!r}: expected {DEVICES}"
                + ("" if accelerator == "cuda" else " (-1 only with a GPU accelerator)")
            )
        return int(value)
    if accelerator == "cpu":
        raise ValueError(
            f"trainer.devices={devices!r}: a list of device indices needs a GPU accelerator; with cpu "
            "expected a number of processes ≥ 1"
        )
    if (
        not value
        or len(set(value)) != len(value)
        or any(isinstance(i, bool) or not isinstance(i, numbers.Integral) or i < 0 for i in value)
    ):
        raise ValueError(f"trainer.devices={devices!r}: expected distinct GPU indices ≥ 0")
    return list(value)


def check_devices(devices, accelerator: str | None) -> None:
    """``devices`` on this machine with ``accelerator`` ('auto' resolved to cuda or cpu)."""
    value = devices_value(devices, accelerator)
    if value is None or accelerator is None or value == "auto":
        return
    gpus = _cuda_count()
    if accelerator == "auto":
        accelerator = "cuda" if gpus else "cpu"
        value = devices_value(devices, accelerator)
    if accelerator == "cuda":
        if value == -1:
            return
        if isinstance(value, int) and value > gpus or isinstance(value, list) and max(value) >= gpus:
            raise ValueError(
                f"trainer.devices={devices!r}: only {gpus} CUDA device(s) here"
                + (f" (indices 0..{gpus - 1})" if isinstance(value, list) and gpus else "")
            )
        return
    cores = os.cpu_count() or 1
    if isinstance(value, int) and value > cores:  # one training process per device: 99 would exhaust memory
        raise ValueError(
            f"trainer.devices={devices!r} on {accelerator}: one process per device on {cores} CPU "
            f"core(s); expected at most {cores}"
        )


def check_available(acc: str | None, given=None) -> None:
    """The accelerator exists on this machine (checked before anything is built, not when only parsing)."""
    given = acc if given is None else given
    if acc == "cuda" and _cuda_count() == 0:
        raise ValueError(
            f"trainer.accelerator={given!r}: this torch sees no CUDA device (CPU-only build or no GPU); "
            "expected cpu or auto"
        )
    if acc == "mps":
        import torch

        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"trainer.accelerator={given!r}: MPS is not available here; expected cpu or auto")


def check_settings(cfg, argv=None) -> None:
    """What a configuration can be checked for anywhere (when parsed): numbers, names, shapes."""
    check_argv_numbers(argv)
    check_seed(cfg.get("seed_everything"))
    trainer = cfg.get("trainer") or {}
    devices_value(trainer.get("devices"), check_accelerator(trainer.get("accelerator")))


def check_machine(cfg) -> None:
    """What only this machine decides (before the trainer is built): the accelerator and the number of devices.
    A configuration for GPUs still parses on a laptop (--print_config, experiment plans)."""
    trainer = cfg.get("trainer") or {}
    acc = check_accelerator(trainer.get("accelerator"))
    check_available(acc, trainer.get("accelerator"))
    check_devices(trainer.get("devices"), acc)
