"""Every command in README.md's code blocks parses with the entry point it names, as written.

Each ``soe …`` (``soe prepare`` and ``soe train`` through the parsers they hand their arguments to), ``python -m
soe …``, ``python -m studies.experiments[.ablate] …``, ``python -m data_prep.prepare …``, ``python demo.py …`` and
``python train.py fit …`` line (also under torchrun/srun) goes through the real argument parser of its entry point; nothing trains or runs. Files the commands name as configs must exist.
The Python block's API names must exist. (The commands' end-to-end runs are the other tests and `make demo`.)
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VARS = {"$CKPT": "runs/tiny/checkpoints/last.ckpt", "$N": "2", "$NODE_RANK": "0", "$MASTER_HOST": "localhost"}


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def commands() -> list[list[str]]:
    out = []
    for block in blocks("bash"):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            for var, val in sorted(VARS.items(), key=lambda kv: -len(kv[0])):
                line = line.replace(var, val)
            argv = shlex.split(line, comments=True)
            if "python" in argv or "train.py" in argv or argv[0] == "soe":
                out.append(argv)
    return out


def entry(argv: list[str]) -> tuple[str, list[str]]:
    if argv[0] == "soe":  # the console script
        return "soe", argv[1:]
    if "train.py" in argv:
        i = argv.index("train.py")
        return "train.py", argv[i + 1 :]
    i = argv.index("python")
    if argv[i + 1] == "-m":
        return argv[i + 2], argv[i + 3 :]
    return argv[i + 1], argv[i + 2 :]


def parse(name: str, args: list[str]) -> None:
    if name == "soe" and args[:1] == ["prepare"]:
        from data_prep.prepare import build_parser

        return build_parser("soe prepare").parse_args(args[1:])
    if name == "soe" and args[:1] == ["train"]:
        return parse_train(args[1:])
    if name == "soe":
        from soe.cli import build_parser
    elif name == "studies.experiments":
        from studies.experiments.experiment import build_parser
    elif name == "studies.experiments.ablate":
        from studies.experiments.ablate import build_parser
    elif name == "studies.experiments.search":
        from studies.experiments.search import build_parser
    elif name == "studies.merging":
        from studies.merging.__main__ import build_parser
    elif name == "data_prep.prepare":
        from data_prep.prepare import build_parser
    elif name == "demo.py":
        from demo import build_parser
    elif name == "train.py":
        return parse_train(args)
    elif name.startswith("bench."):
        import importlib

        build_parser = importlib.import_module(name).build_parser
    else:
        raise AssertionError(f"README names an entry point this test does not know: {name}")
    build_parser().parse_args(args)


def parse_train(args: list[str]) -> None:
    from soe.data.datamodule import SoupDataModule
    from soe.train.cli import SoupCLI
    from soe.train.module import SoupModule

    class ParseOnly(SoupCLI):
        def instantiate_classes(self):
            pass

        def _run_subcommand(self, subcommand):
            pass

    try:
        ParseOnly(SoupModule, SoupDataModule, args=args, auto_configure_optimizers=False)
    except SystemExit as e:  # --print_config prints and exits 0
        assert e.code == 0, f"train.py {' '.join(args)} exited {e.code}"


def test_readme_has_commands():
    names = {entry(a)[0] for a in commands()}
    assert {"soe", "studies.experiments", "studies.experiments.ablate", "data_prep.prepare", "train.py"} <= names, names
    front = {tuple(a[1:2]) for a in commands() if a[0] == "soe"}
    assert {("prepare",), ("train",)} <= front, front


@pytest.mark.parametrize("argv", commands(), ids=lambda a: " ".join(a)[:80])
def test_readme_command_parses(argv, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    name, args = entry(argv)
    for i, a in enumerate(args):
        if a == "--config" and (name != "soe" or args[0] in ("prepare", "train")):
            assert (ROOT / args[i + 1]).is_file(), f"{args[i + 1]} named in README does not exist"
    parse(name, args)
    capsys.readouterr()


def test_readme_python_block_names_exist():
    import soe
    from soe.api import Soup, Specialist

    code = "\n".join(blocks("python"))
    for obj, attr in re.findall(r"\b(soup|spec)\.(\w+)\(", code):
        cls = Soup if obj == "soup" else Specialist
        assert hasattr(cls, attr), f"README calls {obj}.{attr}(), which {cls.__name__} does not have"
    for attr in re.findall(r"\bsoe\.(\w+)\(", code):
        assert hasattr(soe, attr), f"README calls soe.{attr}()"
