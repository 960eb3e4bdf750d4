"""The training loop: convergence, sharding, checkpoint kill-and-resume, results, errors."""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs import fmnist_mlp
from rec_lra_jax import checkpoints, input_pipeline, rules, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke_config(**overrides):
    config = fmnist_mlp.get_config("smoke")
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


@pytest.mark.parametrize("rule", ["rec_lra", "lra_e", "bp", "fa", "dfa"])
def test_toy_convergence(tmp_path, rule):
    config = smoke_config(rule=rule, num_epochs=8, **{"optim.lr": 3e-3})
    results = train.train_and_evaluate(config, str(tmp_path))
    assert results["test_accuracy"] > 0.9, results


def test_results_and_metrics_files(tmp_path):
    config = smoke_config(**{"diagnostics.cosine": True})
    results = train.train_and_evaluate(config, str(tmp_path))
    with open(tmp_path / "results.json") as f:
        on_disk = json.load(f)
    assert on_disk == results
    for key in ("rule", "dataset", "model", "epochs", "test_accuracy", "best_val_accuracy",
                "train_seconds"):
        assert key in on_disk
    assert on_disk["model"] == "mlp-784-32-32-32-10" and on_disk["steps"] == 32
    lines = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert {"cosine/layer_00", "cosine/layer_03"} <= set(lines[-1])
    assert lines[-1]["cosine/layer_03"] > 0.99  # the output layer's delta is its gradient


def _smoke_step_inputs():
    """A fresh rec-LRA smoke state, the synthetic train split, 3 batches, the step kwargs."""
    config = smoke_config()
    data = input_pipeline.synthetic_dataset()
    model = train.make_model(config.model, 10)
    rule = train.make_rule("rec_lra", config.lra)
    tx = train.make_optimizer(config.optim, total_steps=10, learn_feedback=True)
    state = train.create_train_state(jax.random.key(0), model, rule, tx, (1, 28, 28, 1))
    x, y = jnp.asarray(data.train.images), jnp.asarray(data.train.labels)
    batches = jnp.arange(3 * 32).reshape(3, 32)
    kwargs = dict(model=model, rule=rule, tx=tx, key=jax.random.key(1), noise_std=0.1,
                  num_classes=10)
    return state, x, y, batches, kwargs


def test_sharded_train_step_equals_unsharded():
    state, x, y, batches, kwargs = _smoke_step_inputs()
    mesh = jax.make_mesh((8,), ("data",), (jax.sharding.AxisType.Auto,))
    ref, _ = jax.jit(lambda s: train.train_steps(s, x, y, batches, **kwargs))(state)
    got, _ = jax.jit(lambda s: train.train_steps(
        s, x, y, batches, sharding=NamedSharding(mesh, P("data")), **kwargs))(state)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), ref, got)
    assert train.data_mesh_sharding(32) is not None and train.data_mesh_sharding(30) is None


def test_single_step_calls_equal_the_fused_scan():
    # steps_per_call=1 takes the loop-free path (ResNets on CPU); it must be the same step.
    state, x, y, batches, kwargs = _smoke_step_inputs()
    step = jax.jit(lambda s, b: train.train_steps(s, x, y, b, **kwargs))
    fused, fused_metrics = step(state, batches)
    single, losses = state, []
    for k in range(3):
        single, m = step(single, batches[k:k + 1])
        assert m["loss"].shape == (1,)
        losses.append(m["loss"][0])
    assert int(single.step) == 3
    np.testing.assert_allclose(np.array(losses), fused_metrics["loss"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 fused, single)


def _run_entry_point(workdir, *extra, wait=True, config="configs/fmnist_mlp.py:smoke"):
    cmd = [sys.executable, "-m", "experiments.fashion_mnist", f"--config={config}",
           f"--workdir={workdir}", *extra]
    if wait:
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _finalized_checkpoints(workdir):
    """Step directories orbax has finished writing (temporaries carry a suffix)."""
    directory = workdir / "checkpoints"
    return [d for d in os.listdir(directory) if d.isdigit()] if directory.exists() else []


def test_kill_and_resume_matches_uninterrupted_run(tmp_path):
    epochs = "--config.num_epochs=12"
    reference = _run_entry_point(tmp_path / "ref", epochs)
    assert reference.returncode == 0, reference.stderr[-2000:]
    proc = _run_entry_point(tmp_path / "killed", epochs, wait=False)
    deadline = time.time() + 300
    while not _finalized_checkpoints(tmp_path / "killed") and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed/results.json").exists(), "run ended before it was killed"
    resumed = _run_entry_point(tmp_path / "killed", epochs)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ref = json.load(open(tmp_path / "ref/results.json"))
    got = json.load(open(tmp_path / "killed/results.json"))
    assert got["resumed_from_step"] > 0
    epochs = [json.loads(x)["epoch"] for x in open(tmp_path / "killed/metrics.jsonl")]
    assert epochs == list(range(1, 13))  # no epoch logged twice across the kill
    for key in ("test_accuracy", "test_loss", "best_val_accuracy", "steps"):
        assert got[key] == pytest.approx(ref[key], rel=1e-5), key


def test_corrupt_checkpoint_fails_clearly_and_keeps_files(tmp_path):
    config = smoke_config()
    train.train_and_evaluate(config, str(tmp_path))
    latest = max(glob.glob(str(tmp_path / "checkpoints/[0-9]*")), key=os.path.getmtime)
    for path in glob.glob(os.path.join(latest, "state", "**", "*"), recursive=True):
        if os.path.isfile(path):
            with open(path, "wb") as f:
                f.write(b"garbage")
    before = sorted(glob.glob(str(tmp_path / "**"), recursive=True))
    with pytest.raises(checkpoints.CheckpointError, match="left in place"):
        train.train_and_evaluate(config, str(tmp_path))
    assert sorted(glob.glob(str(tmp_path / "**"), recursive=True)) == before


def test_every_config_loads():
    for path in glob.glob(os.path.join(REPO, "configs", "*.py")):
        name = os.path.basename(path)[:-3]
        if name == "__init__":
            continue
        module = __import__(f"configs.{name}", fromlist=["get_config"])
        args = [None, "smoke"] + [a for a in ("demo", "full") if f"`{a}`" in module.__doc__]
        for arg in args:
            config = module.get_config(arg)
            assert config.rule in rules.RULES
            train.make_rule(config.rule, config.lra, config.model.name)
        with pytest.raises(ValueError, match="Unknown config argument"):
            module.get_config("huge")


def test_bad_config_values_and_keys(tmp_path):
    with pytest.raises(ValueError, match="Unknown rule"):
        train.make_rule("hebb", smoke_config().lra)
    with pytest.raises(ValueError, match="Unknown optimizer"):
        train.make_optimizer(smoke_config(**{"optim.name": "lion"}).optim, total_steps=1,
                             learn_feedback=True)
    proc = _run_entry_point(tmp_path, "--config.optim.lrr=0.1")
    assert proc.returncode != 0 and "lrr" in proc.stderr
    proc = _run_entry_point(tmp_path, "--config.data.dir=/nonexistent/fmnist",
                            config="configs/fmnist_mlp.py")
    assert proc.returncode != 0 and "does not exist" in proc.stderr
    proc = _run_entry_point(tmp_path, "--config.data.dir=/some/dir")
    assert proc.returncode != 0 and "dataset is 'synthetic'" in proc.stderr


def test_progress_lines_within_an_epoch(tmp_path):
    proc = _run_entry_point(tmp_path, "--config.log_every_steps=5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = re.findall(r"step (\d+)/32: train_loss [0-9.]+, [0-9.]+ steps/s", proc.stderr)
    assert len(lines) >= 4 and all(int(a) < int(b) for a, b in zip(lines, lines[1:], strict=False))
    quiet = _run_entry_point(tmp_path / "quiet")
    assert quiet.returncode == 0 and "steps/s" not in quiet.stderr


@pytest.mark.parametrize("rule", ["rec_lra", "bp", "fa", "dfa", "sign_symmetry"])
def test_resnet_rules_in_the_training_loop(tmp_path, rule):
    """Every rule trains a (tiny) ResNet through the same loop, BatchNorm stats included."""
    from configs import fmnist_resnet18

    config = fmnist_resnet18.get_config("smoke")
    with config.unlocked():
        config.rule, config.num_epochs = rule, 1
    results = train.train_and_evaluate(config, str(tmp_path))
    assert results["model"] == "resnet18-w4-cifar" and results["steps"] == 16
    assert np.isfinite(results["test_loss"])
    assert checkpoints.manager(str(tmp_path)).latest_step() == 16


def test_crop_flip_is_a_shifted_or_flipped_crop():
    images = jnp.arange(2 * 6 * 6 * 1, dtype=jnp.float32).reshape(2, 6, 6, 1) + 1
    out = train.crop_flip(jax.random.key(0), images, pad=2)
    assert out.shape == images.shape
    padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)))
    for i in range(2):
        windows = [padded[i, y:y + 6, x:x + 6] for y in range(5) for x in range(5)]
        windows += [w[:, ::-1] for w in windows]
        assert any(np.array_equal(np.asarray(out[i]), w) for w in windows)
