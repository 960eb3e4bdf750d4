"""A workdir's records describe the model on disk in every state: finished, resumed midway
under another config, records deleted or truncated, only best/ left (issue 31)."""

import glob
import json
import os
import shutil

import pytest

from experiments import bad_inputs
from rec_lra_jax import checkpoints, metrics, rundir, train
from tests.helpers import smoke_config

pytestmark = pytest.mark.slow  # the command line in subprocesses


@pytest.fixture(scope="module")
def finished_mlp(tmp_path_factory):
    """A finished 2-epoch smoke run (lr 0.001, 32 steps); tests work on copies."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    train.train_and_evaluate(smoke_config(), str(workdir))
    return workdir


def _copy_run(finished, tmp_path):
    return shutil.copytree(finished, tmp_path / "run")


def _records(workdir):
    return (json.load(open(workdir / "config.json")), json.load(open(workdir / "results.json")))


def _meta_history(directory):
    return [(s["start_step"], s["config"] and s["config"]["optim"]["lr"])
            for s in checkpoints.read_meta(str(directory))["history"]]


def test_a_finished_run_under_another_config_keeps_its_records(finished_mlp, tmp_path):
    """Allowed to resume a finished run with another lr, nothing is left to train: the
    records keep describing the model on disk (lr 0.001), not the new config."""
    run = _copy_run(finished_mlp, tmp_path)
    before = _records(run)[1]
    out = train.train_and_evaluate(smoke_config(**{"optim.lr": 0.01}), str(run),
                                   allow_config_change=True)
    config, results = _records(run)
    assert config["config"]["optim"]["lr"] == 0.001 and len(config["history"]) == 1
    assert out == results and results["steps"] == 32 and "history" not in results
    assert results["test_accuracy"] == before["test_accuracy"]


def test_fewer_epochs_report_the_epochs_the_model_was_trained_for(finished_mlp, tmp_path):
    run = _copy_run(finished_mlp, tmp_path)
    with pytest.raises(rundir.ConfigChangedError, match=r"num_epochs: 2 -> 1"):
        train.train_and_evaluate(smoke_config(num_epochs=1), str(run))
    out = train.train_and_evaluate(smoke_config(num_epochs=1), str(run),
                                   allow_config_change=True)
    config, results = _records(run)
    assert out["epochs"] == results["epochs"] == 2 and results["steps"] == 32
    assert config["config"]["num_epochs"] == 2


def test_a_changed_config_resumed_midway_records_both_segments(tmp_path):
    train.train_and_evaluate(smoke_config(num_epochs=1), str(tmp_path))
    changed = smoke_config(**{"optim.lr": 0.01})  # and 2 epochs: 16 more steps at lr 0.01
    out = train.train_and_evaluate(changed, str(tmp_path), allow_config_change=True)
    config, results = _records(tmp_path)
    assert out["steps"] == 32 and out["epochs"] == 2
    assert results["history"] == [{"steps": [0, 16]},
                                  {"steps": [16, 32], "changes": ["optim.lr: 0.001 -> 0.01"]}]
    assert [(s["start_step"], s["config"]["optim"]["lr"]) for s in config["history"]] == [
        (0, 0.001), (16, 0.01)] and config["config"]["optim"]["lr"] == 0.01
    assert _meta_history(tmp_path / "checkpoints") == [(0, 0.001), (16, 0.01)]
    # The workdir now belongs to the new config: it is reported as finished, and the old
    # config is the changed one.
    assert train.train_and_evaluate(changed, str(tmp_path)) == results
    with pytest.raises(rundir.ConfigChangedError, match=r"optim\.lr: 0\.01 -> 0\.001"):
        train.train_and_evaluate(smoke_config(num_epochs=3), str(tmp_path))


def test_checkpoints_know_their_config_without_config_json(finished_mlp, tmp_path):
    run = _copy_run(finished_mlp, tmp_path)
    os.remove(run / "config.json")
    with pytest.raises(rundir.ConfigChangedError, match=r"optim\.lr: 0\.001 -> 0\.01"):
        train.train_and_evaluate(smoke_config(**{"optim.lr": 0.01}), str(run))
    assert not (run / "config.json").exists()
    # The same config resumes (nothing left to train) and writes the records again.
    out = train.train_and_evaluate(smoke_config(), str(run))
    config, results = _records(run)
    assert out == results and results["steps"] == 32 and config["config"]["optim"]["lr"] == 0.001


def test_checkpoints_of_an_unknown_config_are_treated_as_changed(finished_mlp, tmp_path):
    """Checkpoints written before they carried their config, and no config.json: refused
    unless allowed; then the records say the first segment's config is unknown."""
    run = _copy_run(finished_mlp, tmp_path)
    for path in glob.glob(str(run / "checkpoints/*/meta/metadata")):
        meta = json.load(open(path))
        del meta["history"]
        json.dump(meta, open(path, "w"))
    os.remove(run / "config.json")
    with pytest.raises(rundir.ConfigChangedError, match=r"no record of the config"):
        train.train_and_evaluate(smoke_config(), str(run))
    out = train.train_and_evaluate(smoke_config(num_epochs=3), str(run),
                                   allow_config_change=True)
    config, _ = _records(run)
    assert out["steps"] == 48 and out["history"] == [
        {"steps": [0, 32]}, {"steps": [32, 48], "changes": ["config: unknown -> another"]}]
    assert [s["start_step"] for s in config["history"]] == [0, 32]
    assert config["history"][0]["config"] is None


def test_the_best_model_of_another_config_is_never_replaced_silently(finished_mlp, tmp_path):
    run = _copy_run(finished_mlp, tmp_path)
    shutil.rmtree(run / "checkpoints")
    best = bad_inputs.snapshot(str(run / "best"))
    with pytest.raises(rundir.ConfigChangedError,
                       match=r"(?s)best holds the best model of a run made with a different "
                             r"config.*optim\.lr: 0\.001 -> 0\.01"):
        train.train_and_evaluate(smoke_config(**{"optim.lr": 0.01}), str(run))
    assert bad_inputs.snapshot(str(run / "best")) == best
    # Explicitly allowed, the new run's best replaces it and says what trained it.
    train.train_and_evaluate(smoke_config(**{"optim.lr": 0.01}), str(run),
                             allow_config_change=True)
    assert _meta_history(run / "best") == [(0, 0.01)]
    assert _records(run)[0]["config"]["optim"]["lr"] == 0.01


def test_truncated_records_are_rewritten(finished_mlp, tmp_path):
    """A crash can cut config.json, results.json or metrics.jsonl short: the same command
    resumes (the checkpoint knows its config), trims the partial line and rewrites them."""
    run = _copy_run(finished_mlp, tmp_path)
    before = _records(run)[1]
    for name in ("config.json", "results.json"):
        text = open(run / name).read()
        open(run / name, "w").write(text[:len(text) // 2])
    lines = open(run / "metrics.jsonl").read()
    open(run / "metrics.jsonl", "w").write(lines[:-40])  # epoch 2's line cut short
    out = train.train_and_evaluate(smoke_config(), str(run))
    config, results = _records(run)
    assert results == out and out["test_accuracy"] == before["test_accuracy"]
    assert config["config"]["optim"]["lr"] == 0.001
    assert [r["epoch"] for r in metrics.read_jsonl(str(run / "metrics.jsonl"))] == [1]


def _fake_run(root, name, config, accuracy):
    run = root / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": config}))
    (run / "results.json").write_text(json.dumps({"test_accuracy": accuracy, "epochs": 2}))


def test_the_frontier_groups_seeds_across_keys_added_since(tmp_path):
    # A run saved before optim.share_moments and mesh.data existed is the same point as a
    # newer seed of its config, and a kp run finds its backprop twin although bp does not
    # read share_moments.
    from experiments import frontier  # noqa: PLC0415 - absl flags at import

    new = smoke_config().to_dict()
    old = json.loads(json.dumps(new))
    del old["optim"]["share_moments"], old["mesh"]
    for name, config, seed, rule, acc in [("kp0", old, 0, "kp", 0.5), ("kp1", new, 1, "kp", 0.7),
                                          ("bp0", new, 0, "bp", 0.6), ("bp1", old, 1, "bp", 0.8)]:
        _fake_run(tmp_path, name, {**json.loads(json.dumps(config)), "seed": seed, "rule": rule},
                  acc)
    rows = {r["rule"]: r for r in frontier.points(frontier.load_runs([str(tmp_path / "*")]))}
    assert rows.keys() == {"kp", "bp"}
    assert rows["kp"]["seeds"] == [0, 1] and rows["kp"]["test"] == pytest.approx(60.0)
    assert rows["kp"]["bp"] == pytest.approx(70.0)
