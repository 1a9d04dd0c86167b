"""Property-based tests (hypothesis) of the input parsers: the weights parser, the JSON/YAML loaders, the merge
config and the prepare config. Whatever the input, each either returns a valid value or raises the one-line
user error (ValueError / OSError) that `soe.errors.run_entry` reports; never anything else (issue 25)."""

from __future__ import annotations

import json
import math

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from data_prep import config as C  # noqa: E402
from soe.checks import safe_load_yaml, strict_number  # noqa: E402
from soe.fileio import read_json  # noqa: E402
from soe.merging.config import parse_config  # noqa: E402
from soe.weightspec import parse_weights  # noqa: E402

DOMAINS = ["code", "law", "literature", "math"]
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
USER_ERRORS = (ValueError, OSError)

weights = st.floats(min_value=0, max_value=1e30, allow_nan=False, allow_infinity=False)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
trees = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)


@FAST
@given(st.dictionaries(st.sampled_from(DOMAINS), weights, min_size=1))
def test_inline_pairs_equal_the_dict_they_spell(h):
    if sum(h.values()) <= 0:
        return
    inline = ",".join(f"{d}={repr(v)}" for d, v in h.items())
    a, b = parse_weights(h, DOMAINS), parse_weights(inline, DOMAINS)
    assert a.tolist() == b.tolist() and math.isclose(float(a.double().sum()), 1.0, abs_tol=1e-5)


@FAST
@given(st.sampled_from(DOMAINS), weights, weights)
def test_a_domain_given_twice_is_always_refused(d, x, y):
    with pytest.raises(ValueError, match="twice"):
        parse_weights(f"{d}={x!r},{d}={y!r}", DOMAINS)


@FAST
@given(st.text(max_size=40))
def test_any_weights_text_is_parsed_or_refused_as_a_user_error(text):
    try:
        h = parse_weights(text, DOMAINS)
    except USER_ERRORS:
        return
    assert h.shape == (4,) and bool((h >= 0).all()) and math.isclose(float(h.double().sum()), 1.0, abs_tol=1e-4)


@FAST
@given(st.integers(min_value=0, max_value=10**30), st.integers(min_value=1, max_value=20))
def test_numbers_are_read_strictly(n, cut):
    s = str(n)
    assert strict_number(s, int) == n
    if cut < len(s):
        with pytest.raises(ValueError, match="'_'"):
            strict_number(s[:cut] + "_" + s[cut:], int)


@FAST
@given(st.lists(st.tuples(st.text(max_size=4), scalars), max_size=6))
def test_json_with_a_key_twice_is_refused(tmp_path, pairs):
    text = "{" + ",".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "}"
    path = tmp_path / "x.json"
    path.write_text(text)
    keys = [k for k, _ in pairs]
    if len(set(keys)) < len(keys):
        with pytest.raises(ValueError, match="appears twice"):
            read_json(path)
    else:
        assert read_json(path) == json.loads(text)


@FAST
@given(st.binary(max_size=60))
def test_any_bytes_as_json_are_read_or_refused(tmp_path, data):
    path = tmp_path / "x.json"
    path.write_bytes(data)
    try:
        read_json(path)
    except ValueError:
        pass


@FAST
@given(st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(), min_size=1), st.sampled_from(["a", "b", "c"]))
def test_yaml_with_a_key_twice_is_refused(mapping, dup):
    text = "".join(f"{k}: {v}\n" for k, v in mapping.items())
    assert safe_load_yaml(text, "t") == yaml.safe_load(text)
    if dup in mapping:
        with pytest.raises(ValueError, match=f"'{dup}' appears twice"):
            safe_load_yaml(text + f"{dup}: 0\n", "t")


@FAST
@given(st.text(max_size=80))
def test_any_yaml_text_is_loaded_or_refused(text):
    try:
        safe_load_yaml(text, "t")
    except (ValueError, yaml.YAMLError):
        pass


merge_raw = st.fixed_dictionaries(
    {
        "merge_method": st.sampled_from(["linear", "ties", "task_arithmetic", "dare_ties", "nope"]),
        "models": st.lists(
            st.sampled_from(["m/a", "m/b", "m/c"])
            | st.fixed_dictionaries(
                {
                    "model": st.sampled_from(["m/a", "m/b"]),
                    "parameters": st.dictionaries(
                        st.sampled_from(["weight", "density", "bogus"]),
                        st.floats() | st.integers() | st.booleans(),
                        max_size=2,
                    ),
                }
            ),
            max_size=3,
        ),
    },
    optional={
        "base_model": st.sampled_from(["m/base", None]) | trees,
        "parameters": st.dictionaries(st.sampled_from(["lambda", "normalize", "seed", "trim"]), scalars, max_size=3),
        "dtype": st.sampled_from(["float32", "float64"]),
    },
)


@FAST
@given(merge_raw | trees)
def test_any_merge_config_is_valid_or_refused(raw):
    try:
        cfg = parse_config(raw, "m.yaml")
    except ValueError:
        return
    ws = [m.weight for m in cfg.models]
    assert all(math.isfinite(w) and w >= 0 for w in ws) and 0 < sum(ws) < math.inf
    assert len({m.model for m in cfg.models}) == len(cfg.models)  # each model once
    assert math.isfinite(cfg.lam)


prepare_raw = st.fixed_dictionaries(
    {
        "sources": st.lists(
            st.fixed_dictionaries(
                {
                    "name": st.sampled_from(["a", "b", "A b"]),
                    "path": st.just("x.jsonl"),
                    "domain": st.sampled_from(["alpha", "beta", ""]),
                }
            ),
            max_size=2,
        )
    },
    optional={
        "seed": scalars,
        "tokenizer": st.dictionaries(
            st.sampled_from(["vocab_size", "min_frequency"]), st.integers() | scalars, max_size=2
        ),
        "shards": st.dictionaries(st.sampled_from(["val_every", "dtype"]), scalars, max_size=2),
        "extra": trees,
    },
)


@FAST
@given(prepare_raw | trees)
def test_any_prepare_config_is_valid_or_refused(raw):
    try:
        cfg = C.from_dict(raw, "c.yaml")
    except C.ConfigError:
        return
    assert 258 <= cfg.tokenizer.vocab_size <= C.MAX_VOCAB and 0 <= cfg.seed < 2**63
