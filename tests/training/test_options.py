"""The schema of training options (training/options.py): the defaults, the checks and the train flags.

    .venv/bin/pytest -x -q tests/training/test_options.py
"""
from __future__ import annotations

import pytest
from click.testing import CliRunner

import training.engine
from training.cli import train
from training.config import resolve_config
from training.options import DEFAULTS, OPTIONS, ConfigError, lookup

# Options that resolve_config fills in or converts: their resolved value is not the schema default.
RESOLVED = {"name", "schedule.warmup_epochs"}
NAMED = {"model.name": "mlp", "dataset.name": "mnist", "device": "cpu"}  # values that must name something real


def _other_value(o):
    """A value of ``o`` other than its default that the option allows, as (flag arguments, resolved value)."""
    if isinstance(o.default, bool):
        return [o.flag], True
    if isinstance(o.default, dict):
        return [o.flag, "width=3"], {"width": 3}
    if o.key in NAMED:
        value = NAMED[o.key]
    elif o.choices:
        value = next(c for c in o.choices if c != o.default)
    elif o.key == "time_budget":
        return [o.flag, "5m"], 300.0
    elif (o.type or type(o.default)) is str:
        value = f"/tmp/{o.key}"
    elif (o.type or type(o.default)) is int:
        value = (o.default or 1) + 2
    elif o.high is not None:
        value = 0.25 if o.default == 0.5 else 0.5
    else:
        value = (o.default or 0.0) + 1.5
    if isinstance(o.default, list):
        return [o.flag, str(value)], [value]
    return [o.flag, str(value)], value


@pytest.fixture
def resolved(monkeypatch):
    """Run ``train`` with arguments up to the resolved config (fit is replaced): that config."""
    seen = []

    def fake_fit(cfg, out, **_):
        seen.append(cfg)
        raise FileNotFoundError("not trained here")
    monkeypatch.setattr(training.engine, "fit", fake_fit)

    def run(args):
        seen.clear()
        r = CliRunner().invoke(train, args)
        assert seen, r.output
        return seen[0]
    return run


def test_defaults_come_from_the_schema_and_resolve_unchanged():
    cfg = resolve_config({})
    for o in OPTIONS:
        assert lookup(DEFAULTS, o.key) == o.default, o.key
        if o.key not in RESOLVED:
            assert lookup(cfg, o.key) == o.default, o.key


def test_every_flag_sets_its_key(resolved):
    """Each generated flag lands its value at its own key, and no other option moves from its default."""
    flagged = [o for o in OPTIONS if o.flag]
    assert len(flagged) > 40
    for o in flagged:
        args, expected = _other_value(o)
        cfg = resolved(args)
        assert lookup(cfg, o.key) == expected, (o.key, args)
        for other in OPTIONS:
            if other.key != o.key and other.key not in RESOLVED | {"time_budget", "cost"}:
                assert lookup(cfg, other.key) == other.default, (o.key, other.key)


def test_set_reaches_options_without_a_flag(resolved):
    cfg = resolved(["--set", "loss.class_weights=balanced", "--set", "augment.erase_max_area=0.2", "--lr", "0.1"])
    assert cfg["loss"]["class_weights"] == "balanced" and cfg["augment"]["erase_max_area"] == 0.2
    assert cfg["optimizer"]["lr"] == 0.1


@pytest.mark.parametrize("run, says", [
    ({"optimizer": {"momentum": -1}}, "optimizer.momentum must be >= 0, got -1"),
    ({"ema": 1.0}, r"ema must be in \[0, 1\), got 1.0"),
    ({"dataset": {"val_fraction": 1}}, r"dataset.val_fraction must be in \(0, 1\), got 1"),
    ({"distill": {"temperature": 0}}, "distill.temperature must be > 0"),
    ({"snapshots": {"epochs": [2, 0]}}, "snapshots.epochs must be >= 1, got 0"),
    ({"epochs": "many"}, "epochs must be a number >= 1, got 'many'"),
    ({"loss": {"logit_adjust": float("nan")}}, "loss.logit_adjust must be >= 0"),
    ({"loss": {"mse_on": "probs"}}, "unknown loss.mse_on 'probs'; choose from logits, softmax"),
    ({"method": "svm"}, "unknown method 'svm'; choose from engine, lda"),
    ({"explain": ["gradcam", "lime"]}, "explain must be a list of methods from gradcam, gradcampp, saliency, ig, "
                                       "smoothgrad, got \\['gradcam', 'lime'\\]"),
    ({"explain": "gradcam"}, "explain must be a list of methods"),
])
def test_a_bad_value_is_one_line_naming_the_key_and_what_is_allowed(run, says):
    with pytest.raises(ConfigError, match=says):
        resolve_config({"model": "lenet", **run})


def test_a_bad_flag_or_set_value_exits_2_in_one_line(tmp_path):
    for args, says in ((["--momentum", "-1"], "--momentum"),
                       (["--set", "optimizer.momentum=-1"], "optimizer.momentum")):
        r = CliRunner().invoke(train, [*args, "--out", str(tmp_path / "x")])
        assert r.exit_code == 2 and says in r.output and "Traceback" not in r.output, r.output
