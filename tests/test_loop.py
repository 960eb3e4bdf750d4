"""The training loop: convergence, frozen outputs, sharding, fused steps, metrics, resume."""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs import cifar10_resnet18, fmnist_mlp, fmnist_resnet18
from rec_lra_jax import (
    builder,
    checkpoints,
    input_pipeline,
    local,
    metrics,
    rules,
    sources,
    steps,
    train,
)
from rec_lra_jax.config_schema import ConfigError
from tests.helpers import smoke_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FROZEN = os.path.join(REPO, "tests", "fixtures", "loop_v0.json")


@pytest.mark.parametrize("rule", ["rec_lra", "lra_e", "bp", "fa", "dfa"])
def test_toy_convergence(tmp_path, rule):
    config = smoke_config(rule=rule, num_epochs=8, **{"optim.lr": 3e-3})
    results = train.train_and_evaluate(config, str(tmp_path))
    assert results["test_accuracy"] > 0.9, results


@pytest.mark.parametrize("name,module,rule,epochs", [
    ("mlp_rec_lra", fmnist_mlp, "rec_lra", 2), ("mlp_bp", fmnist_mlp, "bp", 2),
    ("mlp_dfa", fmnist_mlp, "dfa", 2), ("resnet_rec_lra", fmnist_resnet18, "rec_lra", 1),
    ("resnet_bp", fmnist_resnet18, "bp", 1)])
def test_loop_reproduces_the_first_release(tmp_path, name, module, rule, epochs):
    """The single loop equals the first release's loop on the same configs (frozen)."""
    # Sharding over 8 fake devices changes reduction orders, so each count has its outputs.
    # Other XLA versions fuse and reduce in other orders, and other CPUs (vector width,
    # matmul kernels) round otherwise: after 16 ResNet steps the test loss moves by up to
    # 3e-5 of itself (jax 0.10.2 on an AVX-512 Xeon), hence 1e-4. The deltas themselves
    # are checked to 1e-8 in float64 (tests/test_engine.py); here a 1% change of the
    # learning rate moves resnet_bp's test loss by 3e-3 and its accuracies by 1-2%.
    fixtures = json.load(open(FROZEN))
    frozen = fixtures[str(jax.device_count())][name]
    rel = 1e-4
    # The first release's MLP synapses were N(0, 1) ("unit"); "he" is the default now.
    pins = {"lra.feedback_init": "unit"} if name == "mlp_rec_lra" else {}
    results = train.train_and_evaluate(
        smoke_config(module, rule=rule, num_epochs=epochs, **pins), str(tmp_path))
    for key, value in frozen["results"].items():
        assert results[key] == pytest.approx(value, rel=rel), key
    records = metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert len(records) == len(frozen["metrics"])
    for got, want in zip(records, frozen["metrics"], strict=True):
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=rel), (key, got, want)


def test_results_and_metrics_files(tmp_path):
    config = smoke_config(**{"diagnostics.cosine": True})
    results = train.train_and_evaluate(config, str(tmp_path))
    with open(tmp_path / "results.json") as f:
        on_disk = json.load(f)
    assert on_disk == results
    for key in ("rule", "dataset", "model", "epochs", "test_accuracy", "test_top5",
                "best_val_accuracy", "best_step", "train_seconds"):
        assert key in on_disk
    assert on_disk["model"] == "mlp-784-32-32-32-10" and on_disk["steps"] == 32
    lines = metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [r["epoch"] for r in lines] == [1, 2]
    assert {"cosine/layer_00", "cosine/layer_03", "lr", "val_top5"} <= set(lines[-1])
    assert lines[-1]["cosine/layer_03"] > 0.99  # the output layer's delta is its gradient
    assert lines[-1]["norm_ratio/layer_03"] == pytest.approx(1.0, rel=1e-3)  # ... its size too
    assert lines[-1]["norm_ratio/layer_00"] > 0
    best = max(lines, key=lambda r: r["val_accuracy"])
    assert on_disk["best_step"] == best["step"]
    assert on_disk["best_val_accuracy"] == best["val_accuracy"]
    saved = json.load(open(tmp_path / "config.json"))
    assert saved["config"]["optim"]["lr"] == config.optim.lr
    assert saved["resolved"]["steps_per_epoch"] == 16


def _smoke_setup(**kwargs):
    """A rec-LRA smoke setup, the synthetic train split on device, and 3 batches of 32."""
    config = smoke_config()
    setup = builder.create_setup(config, input_shape=(28, 28, 1), num_classes=10,
                                 total_steps=10, donate=False, **kwargs)
    raw = input_pipeline.synthetic_arrays((28, 28, 1), 10, seed=0)["train"]
    data = (jnp.asarray(raw[0]), jnp.asarray(raw[1]))
    return setup, data, jnp.arange(3 * 32).reshape(3, 32)


def test_sharded_train_step_equals_unsharded():
    mesh = jax.make_mesh((8,), ("data",), (jax.sharding.AxisType.Auto,))
    ref_setup, data, batches = _smoke_setup()
    got_setup, _, _ = _smoke_setup(sharding=NamedSharding(mesh, P("data")))
    ref, _ = ref_setup.train_fn(ref_setup.state, data, batches)
    got, _ = got_setup.train_fn(got_setup.state, data, batches)
    # Sharded batch means reduce in another order: float32 rounding (measured: one element
    # in 25,088 off by 2.8e-6 after 3 AdamW steps with He-scaled synapses).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-5), ref, got)
    assert steps.data_mesh_sharding(32).mesh.size == 8
    assert steps.data_mesh_sharding(30, 2).mesh.size == 2
    assert steps.data_mesh_sharding(30, 1) is None
    with pytest.raises(ValueError, match=r"batch_size=30 does not divide over the 8 devices"):
        steps.data_mesh_sharding(30)
    with pytest.raises(ValueError, match=r"mesh.data=16 devices asked for; 8 are visible"):
        steps.data_mesh_sharding(32, 16)


def test_a_batch_that_does_not_divide_the_data_axis_is_a_config_error(tmp_path):
    config = smoke_config(fmnist_mlp, batch_size=30)
    with pytest.raises(ConfigError, match="batch_size=30 does not divide over the 8 devices"):
        train.train_and_evaluate(config, str(tmp_path / "all"))
    config = smoke_config(fmnist_mlp, batch_size=30, **{"mesh.data": 2})
    results = train.train_and_evaluate(config, str(tmp_path / "two"))  # over 2 devices
    assert np.isfinite(results["test_loss"])


@pytest.mark.parametrize("rule,lra", [
    ("kp", {}),
    ("rec_lra", {"lra.module": "stage", "lra.local_loss": "only", "lra.local_loss_grid": 2,
                 "lra.local_loss_hidden": 8, "lra.local_loss_sim": 0.5,
                 "lra.local_loss_recon": 0.5}),
    ("rec_lra", {"lra.module": "stage", "lra.local_loss": "only", "lra.local_loss_conv": 4}),
    ("rec_lra", {"mlp": True}),  # an MLP: W^T of the layer above, the output's kernel
    ("kp", {"mlp": True}),
])
def test_shared_moments_train_exactly_like_adamw_with_less_state(rule, lra):
    """optim.share_moments: every synapse whose Kolen-Pollack delta equals a kernel's or a
    readout entry's (gamma 1) reuses its Adam moments; the train state after 3 fused steps
    equals plain AdamW's, with the optimizer state smaller by those synapses' moments."""
    states, sizes = [], []
    lra = dict(lra)
    module = fmnist_mlp if lra.pop("mlp", False) else fmnist_resnet18
    for share in (False, True):
        config = smoke_config(module, rule=rule, **lra, **{
            "lra.gamma": 1.0, "optim.share_moments": share, "optim.weight_decay": 0.05})
        builder.validate(config)
        setup = builder.create_setup(config, input_shape=(28, 28, 1), num_classes=10,
                                     total_steps=10, donate=False)
        raw = input_pipeline.synthetic_arrays((28, 28, 1), 10, seed=0)["train"]
        data = (jnp.asarray(raw[0]), jnp.asarray(raw[1]))
        state, _ = setup.train_fn(setup.state, data, jnp.arange(3 * 32).reshape(3, 32))
        states.append({"params": state.params, "feedback": state.feedback})
        sizes.append(sum(x.size for x in jax.tree.leaves(state.opt_state)))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), *states)
    twins = local.twins(builder.create_graph(config, rule))
    saved = 2 * sum(states[0]["feedback"][name].size for name in twins)
    assert saved > 0 and sizes[0] - sizes[1] == saved
    moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
        jax.tree.leaves(states[0]["feedback"]), jax.tree.leaves(setup.state.feedback),
        strict=True))
    assert moved > 1e-4  # the synapses did learn


def test_readout_lr_scale_steps_the_readouts_and_their_twins_only():
    """optim.readout_lr_scale=k: the readouts (and the synapses that carry their errors,
    their Kolen-Pollack twins) move k times as far in one plain-SGD step; everything else
    moves as without it."""
    moved = {}
    for scale in (1.0, 3.0):
        config = smoke_config(cifar10_resnet18, **{
            "optim.name": "sgd", "optim.momentum": 0.0, "optim.clip_norm": 0.0,
            "optim.weight_decay": 0.0, "optim.readout_lr_scale": scale,
            "lra.weight_mirror": 0.0, "lra.local_loss": "only", "steps_per_call": 1,
            "batch_size": 8})
        builder.validate(config)
        start, end = _steps_from_one_init(config, (32, 32, 3), "rec_lra", steps=1)
        moved[scale] = jax.tree.map(lambda a, b: a - b, end.params, start.params), \
            jax.tree.map(lambda a, b: a - b, end.feedback, start.feedback)
    keys = builder.readout_keys(builder.create_graph(config))
    assert {"block_01_readout", "block_01"} <= keys and "block_00_conv1" not in keys
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-8),
                 moved[1.0][0], moved[3.0][0])
    for name in moved[1.0][1]:
        a, b = moved[1.0][1][name], moved[3.0][1][name]
        assert name not in keys or float(jnp.abs(a).max()) > 0, name
        np.testing.assert_allclose(b, (3.0 if name in keys else 1.0) * a, rtol=1e-4,
                                   atol=1e-7, err_msg=name)


def test_shared_moments_need_gamma_one_and_the_kp_synapse_rule():
    for flags in ({"lra.gamma": 0.5}, {"lra.feedback_rule": "error_displacement"}):
        config = smoke_config(fmnist_resnet18, **flags, **{"optim.share_moments": True})
        with pytest.raises(ConfigError, match="share_moments"):
            builder.validate(config)


def test_single_step_calls_equal_the_fused_scan():
    # steps_per_call=1 takes the loop-free path (ResNets on CPU); it must be the same step.
    setup, data, batches = _smoke_setup()
    fused, fused_metrics = setup.train_fn(setup.state, data, batches)
    single, losses = setup.state, []
    for k in range(3):
        single, m = setup.train_fn(single, data, batches[k:k + 1])
        assert m["loss"].shape == (1,)
        losses.append(m["loss"][0])
    assert int(single.step) == 3
    np.testing.assert_allclose(np.array(losses), fused_metrics["loss"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 fused, single)


def test_streamed_batches_equal_resident_indices():
    # The two batch forms of train_steps (indices into resident data, or arrays) agree.
    setup, data, batches = _smoke_setup()
    ref, ref_m = setup.train_fn(setup.state, data, batches)
    streamed = (data[0][batches], data[1][batches])
    got, got_m = setup.train_fn(setup.state, None, streamed)
    np.testing.assert_array_equal(ref_m["loss"], got_m["loss"])
    jax.tree.map(np.testing.assert_array_equal, ref, got)


class _ZeroLogits(nn.Module):
    """A fake model: logits are zeros, so every loss is log(classes) and argmax is class 0."""

    features: tuple = (10,)

    @nn.compact
    def __call__(self, x, *, train=False):
        del train
        w = self.param("w", nn.initializers.ones, (1,))
        return {"logits": jnp.zeros((x.shape[0], self.features[-1])) * w}


def _zero_rule():
    """A local rule whose deltas are all zeros."""
    def update(updates, state, params, *, signals, labels):
        del updates, signals, labels
        return jax.tree.map(jnp.zeros_like, params), state
    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def test_trainer_aggregates_metrics_exactly(tmp_path, monkeypatch):
    """With a fake model the epoch records are known in closed form (scenic-style test)."""
    monkeypatch.setattr(builder, "create_model", lambda config, n, rule=None: _ZeroLogits((n,)))
    monkeypatch.setattr(builder, "create_rule", lambda config, rule=None, **kw: _zero_rule())
    monkeypatch.setattr(builder, "create_feedback",
                        lambda config, rule=None, **kw: lambda key, signals, params: {})
    monkeypatch.setattr(builder, "target_hops", lambda config, rule=None, **kw: 0)
    config = smoke_config(input_noise=0.0)
    train.train_and_evaluate(config, str(tmp_path))
    raw = input_pipeline.synthetic_arrays((28, 28, 1), 10, seed=0)
    train_labels, val_labels = raw["train"][1], raw["val"][1]
    records = metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))
    log10 = float(jnp.float32(np.log(10.0)))
    for epoch, record in enumerate(records):
        order = input_pipeline.epoch_permutation(0, epoch, 512)[:512].reshape(16, 32)
        per_step = [float(np.mean(train_labels[b] == 0)) for b in order]
        expected = 0.0
        for a in per_step:
            expected += a
        assert record["train_accuracy"] == expected / 16
        assert record["train_loss"] == pytest.approx(log10, rel=1e-6)  # float32 batch mean
        assert record["val_accuracy"] == float(np.mean(val_labels == 0))
        assert record["val_loss"] == pytest.approx(log10, rel=1e-6)
        assert record["step"] == 16 * (epoch + 1)


def _run_entry_point(workdir, *extra, wait=True, config="configs/fmnist_mlp.py:smoke",
                     module="experiments.fashion_mnist"):
    cmd = [sys.executable, "-m", module, f"--config={config}", f"--workdir={workdir}", *extra]
    if wait:
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _finalized_checkpoints(workdir):
    """Step directories orbax has finished writing (temporaries carry a suffix)."""
    directory = workdir / "checkpoints"
    return [d for d in os.listdir(directory) if d.isdigit()] if directory.exists() else []


# The in-memory entry point, and a streaming source (grain pipeline over the same data).
KILL_RUNS = {
    "in_memory": dict(),
    "streaming": dict(module="tests.streaming_run"),
}


@pytest.mark.parametrize("kind", sorted(KILL_RUNS))
def test_kill_and_resume_matches_uninterrupted_run(tmp_path, kind):
    epochs = "--config.num_epochs=12"
    reference = _run_entry_point(tmp_path / "ref", epochs, **KILL_RUNS[kind])
    assert reference.returncode == 0, reference.stderr[-2000:]
    proc = _run_entry_point(tmp_path / "killed", epochs, wait=False, **KILL_RUNS[kind])
    deadline = time.time() + 300
    while not _finalized_checkpoints(tmp_path / "killed") and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed/results.json").exists(), "run ended before it was killed"
    resumed = _run_entry_point(tmp_path / "killed", epochs, **KILL_RUNS[kind])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ref = json.load(open(tmp_path / "ref/results.json"))
    got = json.load(open(tmp_path / "killed/results.json"))
    assert got["resumed_from_step"] > 0
    for key in ("test_accuracy", "test_loss", "best_val_accuracy", "best_step", "steps"):
        assert got[key] == pytest.approx(ref[key], rel=1e-5), key
    # The resumed metrics.jsonl equals the uninterrupted one (wall times aside), the
    # interrupted epoch's training averages included.
    ref_lines = metrics.read_jsonl(str(tmp_path / "ref/metrics.jsonl"))
    got_lines = metrics.read_jsonl(str(tmp_path / "killed/metrics.jsonl"))
    assert [r["epoch"] for r in got_lines] == list(range(1, 13))
    for a, b in zip(ref_lines, got_lines, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if key != "train_seconds":
                assert b[key] == pytest.approx(a[key], rel=1e-5), (key, a, b)


def test_corrupt_checkpoint_fails_clearly_and_keeps_files(tmp_path):
    config = smoke_config()
    train.train_and_evaluate(config, str(tmp_path))
    os.remove(tmp_path / "results.json")  # otherwise the finished run is simply reported
    latest = max(glob.glob(str(tmp_path / "checkpoints/[0-9]*")), key=os.path.getmtime)
    for path in glob.glob(os.path.join(latest, "state", "**", "*"), recursive=True):
        if os.path.isfile(path):
            with open(path, "wb") as f:
                f.write(b"garbage")
    before = sorted(glob.glob(str(tmp_path / "**"), recursive=True))
    with pytest.raises(checkpoints.CheckpointError, match="left in place"):
        train.train_and_evaluate(config, str(tmp_path))
    assert sorted(glob.glob(str(tmp_path / "**"), recursive=True)) == before


def test_every_config_loads_and_validates():
    for path in glob.glob(os.path.join(REPO, "configs", "*.py")):
        name = os.path.basename(path)[:-3]
        if name in ("__init__", "base"):
            continue
        module = __import__(f"configs.{name}", fromlist=["get_config"])
        args = [None, "smoke"] + [a for a in ("demo", "full", "cpu") if f"`{a}`" in module.__doc__]
        for arg in args:
            config = module.get_config(arg)
            builder.validate(config)
            for rule in builder.rules_for(config):
                builder.create_rule(config, rule)
            assert config.dataset in sources.DATASETS
        with pytest.raises(ValueError, match="Unknown config argument"):
            module.get_config("huge")


def test_progress_lines_report_rate_compile_time_and_eta(tmp_path):
    proc = _run_entry_point(tmp_path, "--config.log_every_steps=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = re.findall(r"step (\d+)/32 \(epoch \d\): train_loss [0-9.]+, ([0-9.]+|nan) steps/s, "
                       r"compile ([0-9.]+) s, epoch ETA [0-9:?]+, run ETA [0-9:?]+", proc.stderr)
    numbers = [int(line[0]) for line in lines]
    assert len(numbers) >= 6 and numbers == sorted(set(numbers))
    assert float(lines[-1][2]) > 0  # compilation is reported apart from the rate
    assert float(lines[-1][1]) > 0
    quiet = _run_entry_point(tmp_path / "quiet")
    assert quiet.returncode == 0 and "steps/s" not in quiet.stderr


@pytest.mark.parametrize("rule", ["fa", "dfa", "sign_symmetry", "lra_e"])
def test_resnet_rules_in_the_training_loop(tmp_path, rule):
    """Every rule trains a (tiny) ResNet through the same loop, BatchNorm stats included
    (rec_lra and bp: test_loop_reproduces_the_first_release)."""
    config = smoke_config(fmnist_resnet18, rule=rule, num_epochs=1)
    results = train.train_and_evaluate(config, str(tmp_path))
    assert results["model"] == "resnet18-w4-cifar" and results["steps"] == 16
    assert np.isfinite(results["test_loss"])
    assert checkpoints.manager(str(tmp_path / "checkpoints")).latest_step() == 16


@pytest.mark.parametrize("head", [
    {"lra.local_loss_hidden": 8, "lra.local_loss_recon": 0.5}, {"lra.local_loss_conv": 4}])
def test_local_loss_heads_train_in_the_loop(tmp_path, head):
    """Every kind of local-loss entry (a hidden or conv readout, a decoder, a similarity
    conv) goes through the jitted, donating train step; the similarity conv and its
    synapse, one draw at the start, stay equal (the same deltas, the same optimizer)."""
    config = smoke_config(fmnist_resnet18, num_epochs=1, **{
        "lra.module": "stage", "lra.local_loss": "only", "lra.local_loss_grid": 2,
        "lra.local_loss_sim": 0.9, "lra.gamma": 1.0}, **head)
    results = train.train_and_evaluate(config, str(tmp_path))
    assert results["steps"] == 16 and np.isfinite(results["test_loss"])
    mngr = checkpoints.manager(str(tmp_path / "checkpoints"))
    feedback = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]["feedback"]
    mngr.close()
    S, synapse = feedback["block_03_readout_sim"], feedback["block_03_sim"]
    assert float(np.abs(S).max()) > 0
    np.testing.assert_allclose(synapse, S, rtol=1e-6, atol=1e-7)


def test_crop_flip_is_a_shifted_or_flipped_crop():
    images = jnp.arange(2 * 6 * 6 * 1, dtype=jnp.float32).reshape(2, 6, 6, 1) + 1
    out = steps.crop_flip(jax.random.key(0), images, pad=2)
    assert out.shape == images.shape
    padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)))
    for i in range(2):
        windows = [padded[i, y:y + 6, x:x + 6] for y in range(5) for x in range(5)]
        windows += [w[:, ::-1] for w in windows]
        assert any(np.array_equal(np.asarray(out[i]), w) for w in windows)


def _steps_from_one_init(config, shape, rule, steps=2):
    """The train state after `steps` fused steps (plain SGD) and the one it started from."""
    setup = builder.create_setup(config, input_shape=shape, num_classes=10, total_steps=100,
                                 rule=rule, donate=False)
    rng = np.random.default_rng(0)
    data = (jnp.asarray(rng.integers(0, 256, (16, *shape), dtype=np.uint8)),
            jnp.asarray(rng.integers(0, 10, 16).astype(np.int32)))
    batches = jnp.arange(16, dtype=jnp.int32).reshape(2, 8)[:steps]
    state, _ = setup.train_fn(setup.state, data, batches)
    return setup.state, state


@pytest.mark.parametrize("family,rule", [("mlp", r) for r in rules.RULES] + [
    ("resnet", r) for r in ("rec_lra", "kp", "dfa", "bp", "fa")])
def test_bfloat16_computes_the_forward_and_keeps_the_state_in_float32(family, rule):
    """config.dtype="bfloat16": every matmul and convolution of the forward in bfloat16;
    activations, parameters, synapses, BatchNorm statistics and optimizer state stay
    float32, and each tensor's update points where float32's does (plain SGD, so the update
    is the rule's delta)."""
    module = fmnist_mlp if family == "mlp" else cifar10_resnet18
    shape = (28, 28, 1) if family == "mlp" else (32, 32, 3)
    flags = {"optim.name": "sgd", "optim.momentum": 0.0, "optim.clip_norm": 0.0,
             "optim.weight_decay": 0.0, "input_noise": 0.0, "steps_per_call": 2,
             "batch_size": 8}
    if family == "resnet":
        flags["lra.weight_mirror"] = 0.0
    moved = {}
    for dtype in ("float32", "bfloat16"):
        config = smoke_config(module, rule=rule, dtype=dtype, **flags)
        start, end = _steps_from_one_init(config, shape, rule)
        assert {x.dtype for x in jax.tree.leaves(end)} <= {jnp.dtype("float32"),
                                                            jnp.dtype("int32")}, dtype
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(end.params))
        moved[dtype] = jax.tree.map(lambda a, b: (a - b).ravel(), end.params, start.params)
    model = builder.create_model(smoke_config(module, rule=rule, dtype="bfloat16"), 10, rule)
    variables = {"params": start.params, "batch_stats": start.batch_stats}
    if rules.RULES[rule].backward == "fa":
        variables["feedback"] = start.feedback
    kwargs = {"train": False} if family == "resnet" else {}
    signals = model.apply(variables, jnp.zeros((2, *shape)), **kwargs)
    assert {x.dtype for x in jax.tree.leaves(signals)} == {jnp.dtype("float32")}
    program = str(jax.make_jaxpr(lambda v: model.apply(v, jnp.zeros((2, *shape)), **kwargs))(
        variables)).splitlines()
    products = [line for line in program if "dot_general" in line or "conv_general" in line]
    assert products and all("bf16[" in line for line in products)  # every one in bfloat16
    # Each kernel's update (BatchNorm's bias and scale sum errors over the batch and map,
    # where the rounding of the convolutions' results shows: they count in the whole).
    # Rounding compounds over the 17 hops of kp's and backprop's chains at init, hence the
    # loose minimum; the worst seen here: 0.47 (kp's stem side), median 0.95-1.0.
    cosine = lambda a, b: float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))  # noqa: E731
    pairs = [(jax.tree_util.keystr(path), a, b) for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(moved["float32"]),
        jax.tree.leaves(moved["bfloat16"]), strict=True) if float(jnp.linalg.norm(a)) > 0]
    kernels = sorted(cosine(a, b) for path, a, b in pairs if "kernel" in path)
    whole = cosine(jnp.concatenate([a for _, a, _ in pairs]),
                   jnp.concatenate([b for _, _, b in pairs]))
    assert kernels[len(kernels) // 2] > 0.9 and kernels[0] > 0.3 and whole > 0.9, (kernels,
                                                                                   whole)


@pytest.mark.parametrize("family,rule", [("mlp", r) for r in rules.RULES] + [
    ("resnet", r) for r in ("rec_lra", "kp", "bp")])  # every rule's code path on the MLP
def test_a_layer_axis_trains_as_one_device_does(family, rule):
    """A ("data", "layer") mesh of 2 x 4 of the 8 CPU devices: the batch splits over
    "data", every parameter, synapse and optimizer-state tensor whose last dimension
    divides by 4 lives split over "layer" (and stays so after the steps), and two steps give
    the unsharded state to 1e-6 of each tensor's scale. In float64 (the state and images
    cast), so that what is compared is the partitioning, not float32's summation order:
    local rules take differences of activities (targets), which multiply float32's
    rounding by about 1/beta at each hop (measured in float32: 2e-6 of a tensor's largest
    entry for backprop, up to 1e-3 for LRA-E's near-zero BatchNorm biases)."""
    module = fmnist_mlp if family == "mlp" else cifar10_resnet18
    shape = (28, 28, 1) if family == "mlp" else (32, 32, 3)
    flags = {"optim.name": "sgd", "optim.momentum": 0.9, "optim.clip_norm": 0.0,
             "input_noise": 0.0, "steps_per_call": 2, "batch_size": 8}
    if family == "resnet":
        flags["lra.weight_mirror"] = 0.0
    config = smoke_config(module, rule=rule, **flags)
    sharding = steps.data_mesh_sharding(8, 2, 4)
    assert dict(sharding.mesh.shape) == {"data": 2, "layer": 4}
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, *shape)) / 255.0
    labels = rng.integers(0, 10, 16).astype(np.int32)

    def wide(path, x):  # a scheduled rule's hyperparameters stay as optax writes them
        floating = jnp.issubdtype(x.dtype, jnp.floating)
        return x.astype(np.float64) if floating and "hyperparams" not in str(path) else x

    ends = []
    with jax.enable_x64(True):
        for mesh in (None, sharding):
            setup = builder.create_setup(config, input_shape=shape, num_classes=10,
                                         total_steps=100, rule=rule, donate=False,
                                         sharding=mesh)
            start = jax.tree_util.tree_map_with_path(wide, setup.state)
            if mesh is not None:
                start = jax.device_put(start, steps.state_shardings(start, mesh))
            end, _ = setup.train_fn(start, (jnp.asarray(images), jnp.asarray(labels)),
                                    jnp.arange(16, dtype=jnp.int32).reshape(2, 8))
            ends.append(end)
    ref, end = ends
    assert {x.dtype for x in jax.tree.leaves(end.params)} == {jnp.dtype("float64")}
    split = [x for x in jax.tree.leaves(end) if "layer" in x.sharding.spec]
    assert len(split) > len(jax.tree.leaves(end)) // 3
    assert all(x.sharding.spec == s.spec for x, s in zip(
        jax.tree.leaves(end), jax.tree.leaves(steps.state_shardings(end, sharding)),
        strict=True))
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ref), jax.tree.leaves(end),
                            strict=True):
        a, b = np.asarray(a), np.asarray(b)
        scale = max(float(np.max(np.abs(a), initial=0.0)), 1e-300)
        assert float(np.max(np.abs(a - b), initial=0.0)) <= 1e-6 * scale, \
            jax.tree_util.keystr(path)
