"""soe/configfile.py: the one config system's parsing and its one error line (file, key, value, expected)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import pytest
from annotated_types import Ge, Interval, MinLen
from pydantic import Field

from soe.configfile import (
    Bool,
    ConfigError,
    ConfigNotFound,
    Count,
    Expect,
    Float,
    Int,
    Str,
    config,
    describe,
    parse,
    read_yaml,
)


@config
@dataclass
class Section:
    n: Annotated[Int, Interval(ge=2, le=1_000_000)] = 3
    share: Annotated[Float, Interval(gt=0, le=0.5)] = 0.1
    lr: Annotated[Float, Interval(gt=0, lt=1), Expect("a learning rate in (0, 1)")] = 0.01
    lam: Annotated[Float, Field(alias="lambda")] = 1.0


@config
@dataclass
class Base:
    soup: Str
    h: Str | dict[str, Any] = "mean"


@config
@dataclass
class Top:
    items: Annotated[list[Section], MinLen(1)]
    name: Str = "x"
    flag: Bool = False
    count: Count | None = None
    method: Literal["a", "b"] = "a"
    section: Section = field(default_factory=Section)
    base: Str | Base | None = None
    paths: list[Str] = field(default_factory=list)


def error(raw) -> str:
    with pytest.raises(ConfigError) as e:
        parse(Top, raw, "f.yaml")
    return str(e.value)


def test_a_valid_mapping_becomes_nested_dataclasses():
    cfg = parse(Top, {"items": [{"n": 5, "lambda": 2}], "section": {"share": 0.5}, "base": {"soup": "c"}}, "f.yaml")
    assert cfg.items[0] == Section(n=5, lam=2.0) and isinstance(cfg.items[0].lam, float)  # an int for a float
    assert cfg.section.share == 0.5 and cfg.base == Base("c") and cfg.count is None


@pytest.mark.parametrize(
    "raw, line",
    [
        ({"items": [{}], "flag": "yes"}, "f.yaml: flag='yes': expected true or false"),
        ({"items": [{}], "flag": 1}, "f.yaml: flag=1: expected true or false"),
        ({"items": [{"n": "8192"}]}, "f.yaml: items[0].n='8192': expected an integer in [2, 1,000,000]"),
        ({"items": [{"n": True}]}, "f.yaml: items[0].n=True: expected an integer in [2, 1,000,000]"),
        ({"items": [{"n": 2.0}]}, "f.yaml: items[0].n=2.0: expected an integer in [2, 1,000,000]"),
        ({"items": [{}, {"n": 1}]}, "f.yaml: items[1].n=1: expected an integer in [2, 1,000,000]"),
        ({"items": [{}], "section": {"share": 0}}, "f.yaml: section.share=0: expected a number in (0, 0.5]"),
        ({"items": [{}], "section": {"lambda": float("nan")}}, "f.yaml: section.lambda=nan is not finite"),
        ({"items": [{}], "count": 0}, "f.yaml: count=0: expected a positive integer or null"),
        ({"items": [{}], "method": "c"}, "f.yaml: method='c': expected 'a' or 'b'"),
        ({"items": []}, "f.yaml: items=[]: expected a list (each a mapping of Section settings)"),
        ({"items": [{}], "paths": "a"}, "f.yaml: paths='a': expected a list of strings"),
        ({"items": [{}], "section": 3}, "f.yaml: section: expected a mapping of Section settings, got int"),
        ({}, "f.yaml: items: missing; expected a list (each a mapping of Section settings)"),
        (
            {"items": [{"lr": "3e-4"}]},
            "f.yaml: items[0].lr='3e-4': expected a learning rate in (0, 1) (YAML reads 3e-4 as text: write it "
            "with a dot, e.g. 3.0e-04)",
        ),
        # a union: the member whose shape the value has names the wrong key
        ({"items": [{}], "base": {"soup": "c", "h": True}}, "f.yaml: base.h=True: expected a string or a mapping"),
        ({"items": [{}], "base": 3}, "f.yaml: base=3: expected a string or a mapping of Base settings or null"),
        # every unknown key of the section, with the keys it accepts (a field's alias as the file spells it)
        (
            {"items": [{"lamda": 1, "m": 2}]},
            "f.yaml: items[0]: unknown keys ['lamda', 'm']; expected some of ['lambda', 'lr', 'n', 'share']",
        ),
        ({"items": [{}], "nme": "x"}, "f.yaml: unknown keys ['nme']; expected some of ['base', 'count', 'flag',"),
    ],
)
def test_every_problem_is_one_line_naming_the_key_the_value_and_the_expectation(raw, line):
    msg = error(raw)
    assert msg.startswith(line), msg
    assert "\n" not in msg


def test_describe_states_type_and_range():
    assert describe(Annotated[Int, Ge(2)]) == "an integer ≥ 2"
    assert describe(Count | None) == "a positive integer or null"
    assert describe(Annotated[Float, Interval(gt=0, lt=1)]) == "a number in (0, 1)"
    assert describe(list[Str]) == "a list of strings"


def test_read_yaml_refuses_what_is_not_a_yaml_file(tmp_path):
    with pytest.raises(ConfigNotFound, match="config .*nope.yaml not found") as e:
        read_yaml(tmp_path / "nope.yaml", "config")
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(ConfigNotFound, match="it is a directory"):
        read_yaml(tmp_path, "config")
    (tmp_path / "twice.yaml").write_text("a: 1\na: 2\n")
    with pytest.raises(ConfigError, match="'a' appears twice"):
        read_yaml(tmp_path / "twice.yaml", "config")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe a: 1\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_yaml(tmp_path / "bin.yaml", "config")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        read_yaml(tmp_path / "bad.yaml", "config")
    (tmp_path / "empty.yaml").write_text("")
    assert read_yaml(tmp_path / "empty.yaml", "config") == {}
