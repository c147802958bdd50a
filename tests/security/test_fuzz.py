"""Fuzzing (hypothesis): the validator and every named endpoint's string arguments. No input ends in a
traceback, and no file outside the output folder changes."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studio.services import Services
from tests.conftest import write_pair
from tests.security.conftest import MARKER, REAL_RUN, REAL_SAVE
from tests.security.probe import Outcome, _arguments, call, named_endpoints
from trainers.config import validate_texts
from trainers.config.issues import ConfigIssue

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
FIXTURES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]

# ---- TOML-ish text for the validator -------------------------------------------------------------------------
KEYS = ["output_dir", "dataset", "epochs", "max_steps", "micro_batch_size_per_gpu", "save_every_n_epochs",
        "resolutions", "path", "type", "rank", "lr", "transformer_path", "diffusers_path", "wandb_api_key",
        "init_from_existing", "fuse_adapters", "directory", "num_repeats", '""', '"a.b"', "x"]
TABLES = ["[model]", "[adapter]", "[optimizer]", "[monitoring]", "[studio]", "[[directory]]", "[[eval_datasets]]",
          '[""]', "[a.b.c]"]
PATHS = st.sampled_from(["/", "..", "../../etc/passwd", "~/x", "a" * 5000, "/tmp", "<fill in: path>", "",
                         "%2e%2e/x", "a\\u0000b", "C:\\\\x", "/" + "b" * 300])
SCALARS = st.one_of(st.integers(-2**70, 2**70).map(str), st.floats().map(repr),
                    st.booleans().map(lambda b: "true" if b else "false"), PATHS.map(lambda p: f"'{p}'"),
                    st.text(max_size=20).map(lambda t: '"' + t.encode("unicode_escape").decode().replace('"', '\\"')
                                             + '"'))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
    st.lists(st.tuples(st.sampled_from(KEYS), inner), max_size=3).map(
        lambda kv: "{" + ", ".join(f"{k} = {v}" for k, v in dict(kv).items()) + "}")), max_leaves=12)
LINES = st.one_of(st.tuples(st.sampled_from(KEYS), VALUES).map(lambda kv: f"{kv[0]} = {kv[1]}"),
                  st.sampled_from(TABLES), st.text(max_size=30), st.just("a = " + "[" * 500 + "]" * 500))
TOML = st.lists(LINES, max_size=14).map("\n".join)


@settings(max_examples=250, deadline=None, suppress_health_check=FIXTURES)
@given(main=TOML, dataset=st.one_of(st.none(), TOML), skip=st.booleans(), native=st.booleans())
def test_validator_never_raises(world, main, dataset, skip, native):
    before = world.snapshot()
    text = main if native else main + "\n[studio]\nbackend = 'diffusion-pipe'\n"
    issues = validate_texts(text, dataset, base_dir=world.runs, skip_path_checks=skip)
    assert all(isinstance(issue, ConfigIssue) and issue.key.strip() for issue in issues)
    assert all(len(issue.format()) < 2000 for issue in issues)
    assert world.snapshot() == before


# ---- the endpoints ---------------------------------------------------------------------------------------------
FRAGMENTS = ["..", "/", ".", "%2e", "%2f", "%00", "\x00", "\\", "decoy", "linked", REAL_RUN, REAL_SAVE, "~",
             "\n", "a" * 300, "run.json", "secret.txt"]
ARGS = st.one_of(st.text(max_size=40), st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=6).map("".join),
                 st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=5).map("/".join))


@pytest.fixture
def endpoints(world, manager, tmp_path, monkeypatch):
    import studio
    from trainers import run_library

    # Exports and sample renders would start torch children; their folder checks run before that (stubbed).
    fake = types.SimpleNamespace(**vars(subprocess))
    fake.run = lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "stubbed child")
    fake.Popen = lambda *a, **k: subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"],
                                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    monkeypatch.setattr(run_library, "subprocess", fake)
    blocks = studio.build_app(Services(manager=manager, demo_main=write_pair(tmp_path / "demo")))
    return named_endpoints(blocks)


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURES)
@given(data=st.data(), remote=st.booleans())
def test_endpoint_string_arguments_never_raise_or_reach_outside(world, endpoints, data, remote):
    before = world.snapshot()
    name = data.draw(st.sampled_from(sorted(endpoints)), label="endpoint")
    block_fn = endpoints[name]
    defaults, text, request = _arguments(block_fn)
    args = [data.draw(ARGS, label=f"arg{i}") if i in text else a for i, a in enumerate(defaults)]
    outcome = Outcome()
    call(name, block_fn, args, request, outcome, remote=remote)
    assert outcome.crashes == []
    assert not any(MARKER in out for out in outcome.outputs)
    assert world.snapshot() == before


def test_the_fuzzed_endpoints_include_every_run_endpoint(endpoints):
    assert {"delete_run", "send_command", "watch_events", "validate_config", "browse_dataset"} <= set(endpoints)
