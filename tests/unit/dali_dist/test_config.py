"""Property-based tests (hypothesis) over what users type: any `--set` text, any config dict,
any YAML file gives either a valid Config (that survives a save/load round trip) or one
UserError line, never another exception.

Example counts stay small for CI; `DALI_HYPOTHESIS=explore` runs many more, unseeded."""

from __future__ import annotations

import dataclasses
import re
import io
import os
import tempfile
import typing
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dali_dist.cli import app
from dali_dist.cli_util import exits_cleanly
from dali_dist.config import Config, config_from_dict, dump_yaml, load_config
from dali_dist.errors import UserError

settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("DALI_HYPOTHESIS", "ci"))
pytestmark = pytest.mark.timeout(300)


def _fields(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield prefix + f.name


KEYS = sorted(_fields(Config))
SECTIONS = sorted({k.split(".")[0] for k in KEYS if "." in k})
# YAML that tends to break parsers and coercion: specials, huge numbers, anchors, tags, nesting
NASTY = ["", "~", "null", "true", "no", "1e400", "-1e400", ".nan", ".inf", "-0", "0x1F", "0o17", "1_000",
         "99999999999999999999999999", "-1", "0", "[]", "{}", "[1, [2]]", "{a: {b: c}}", "&a [*a]", "&a {x: *a}",
         "!!binary aGVsbG8=", "!!python/object/apply:os.system ['true']", "!!set {a, b}", "2024-01-01",
         "'quoted'", "\"a\\nb\"", "[", "{", ": :", "- - -", "a: b: c", "\t", "\u2028", "%YAML 1.2", "--- a"]
values = st.one_of(st.sampled_from(NASTY), st.text(max_size=20), st.integers().map(str),
                   st.floats(allow_nan=True).map(repr), st.lists(st.integers(-3, 300), max_size=4).map(str))
keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(SECTIONS), st.text(max_size=15),
                 st.sampled_from(KEYS).map(lambda k: k + ".x"), st.sampled_from(KEYS).map(lambda k: k.upper()))


def check(build):
    """``build()`` gives a Config that round-trips through its YAML, or a one-line UserError."""
    try:
        cfg = build()
    except UserError as exc:
        assert "\n" not in str(exc) and str(exc)
        return None
    assert isinstance(cfg, Config)
    assert config_from_dict(yaml.safe_load(dump_yaml(cfg))) == cfg  # what a run saves loads back
    return cfg


@given(st.lists(st.tuples(keys, values), max_size=4))
def test_any_overrides_give_a_config_or_one_user_error(pairs):
    check(lambda: load_config("grid2d", [f"{k}={v}" for k, v in pairs]))


@given(st.lists(st.text(max_size=40), max_size=3))
def test_any_override_text(texts):
    check(lambda: load_config("grid2d", texts))


json_like = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=12,
)
sections = st.dictionaries(st.sampled_from([*SECTIONS, "name", "extra"]),
                           st.one_of(json_like, st.dictionaries(st.sampled_from([k.split(".")[-1] for k in KEYS]),
                                                                json_like, max_size=4)), max_size=4)


@given(st.one_of(sections, json_like))
def test_any_config_dict(raw):
    check(lambda: config_from_dict(raw))


@given(st.text(max_size=200))
def test_any_yaml_file(text):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "cfg.yaml"
        p.write_text(text)
        check(lambda: load_config(str(p)))


@settings(max_examples=25)
@given(st.lists(st.tuples(keys, values), min_size=1, max_size=3))
def test_cli_dry_run_exit_code_and_one_line(pairs):
    args = ["train", "--config", "grid2d", *[a for k, v in pairs for a in ("--set", f"{k}={v}")], "--dry-run"]
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), pytest.raises(SystemExit) as e:
        exits_cleanly(app)(args)
    if e.value.code == 0:
        assert isinstance(config_from_dict(yaml.safe_load(out.getvalue())), Config)
    else:
        lines = err.getvalue().strip().splitlines()
        assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err.getvalue()


def test_self_referencing_yaml_is_a_user_error():
    """An anchor that contains itself (a list holding itself) is refused, not recursed into."""
    with pytest.raises(UserError):
        load_config("grid2d", ["model.g_hidden=&a [*a]"])


def test_the_same_self_referencing_mapping_set_twice():
    # found by test_any_overrides_give_a_config_or_one_user_error (explore profile): _merge recursed
    with pytest.raises(UserError):
        load_config("grid2d", ["model.adversarial=&a {x: *a}", "model.adversarial=&a {x: *a}"])


@pytest.mark.parametrize("override, message", [
    ("model.d_head_width=0", "model.d_head_width must be a positive integer"),
    ("model.g_fc_width=-3", "model.g_fc_width must be a positive integer"),
    ("model.d_head_width=100000", "model.d_head_width must be between 1 and 16384"),
    ("model.e_head_width=0", "model.e_head_width must be between 1 and 16384"),
    ("model.width=10000", "channels in the deepest layer"),
    # each width within its bound, but the 7x7 map's FC layers multiply them
    ("model.width=8192", "these networks would hold 7,200,495,106 weights (limit 2,147,483,648"),
    ("model.width=2048 --set model.d_head_width=16384", "weights (limit"),
    ("model.lrelu_slope=1.5", "model.lrelu_slope must be in [0, 1)"),
    ("model.d_head=resnet", "model.d_head must be one of conv, mlp"),
    ("optim.lr_e=0", "optim.lr_e must be > 0"),
    ("model.lambda_e_ramp_steps=-1", "model.lambda_e_ramp_steps must be >= 0"),
    ("model.g_through_sigma=false --set model.variant=dali-l2", "model.g_through_sigma=false needs a learned variance"),
    ("model.g_through_sigma=false --set model.variant=gan", "not variant=gan"),
])
def test_bad_image_network_options_are_one_line_config_errors(override, message):
    with pytest.raises(UserError, match=re.escape(message)):
        load_config("mnist", override.split(" --set "), data="x")


def test_the_weight_limit_also_holds_for_the_64_px_presets():
    with pytest.raises(UserError, match="weights \\(limit"):
        load_config("cifar10", ["model.width=2048"], data="x")
    assert load_config("cifar10", [], data="x").model.width == 128


def test_image_options_on_the_2d_networks_are_refused():
    with pytest.raises(UserError, match="apply to image networks"):
        load_config("grid2d", ["model.d_head=mlp"])
