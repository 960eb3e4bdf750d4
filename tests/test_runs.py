"""Runs that lose nothing: divergence, full disks, changed configs, paths, folders, events,
two processes (the schema's checks: tests/test_config.py)."""

import glob
import json
import os
import struct

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import fmnist_resnet18
from experiments import bad_inputs
from rec_lra_jax import (
    builder,
    checkpoints,
    folder,
    metrics,
    rules,
    rundir,
    sources,
    steps,
    train,
)
from rec_lra_jax.input_pipeline import DataError
from tests.helpers import smoke_config


def test_divergence_stops_before_anything_unusable_is_saved(tmp_path):
    """At lr 1e6 the MLP's weights pass 1e8 within a few steps, before its first
    checkpoint: the run stops naming them and saves nothing (a finite but exploding state
    is not a good checkpoint)."""
    config = smoke_config(**{"optim.lr": 1e6})
    with pytest.raises(train.NonFiniteError,
                       match=r"diverged by step \d+ \(epoch 1\): the train state became "
                             r"non-finite or exploded") as info:
        train.train_and_evaluate(config, str(tmp_path))
    assert "params/layer_00/kernel (exploding)" in str(info.value)
    assert "no checkpoint had been written yet" in str(info.value)
    assert not (tmp_path / "results.json").exists()
    assert checkpoints.manager(str(tmp_path / "checkpoints")).all_steps() == []


def test_skipping_nonfinite_updates_is_an_option(tmp_path, monkeypatch):
    """Every batch non-finite (as if the data were broken): each update is skipped until
    max_consecutive_skips lets one through; the run stops there, saving nothing."""
    real = train.steps.normalize
    monkeypatch.setattr(train.steps, "normalize", lambda x, how: real(x, how) * float("nan"))
    config = smoke_config(**{"on_nonfinite": "skip", "max_consecutive_skips": 3})
    with pytest.raises(train.NonFiniteError, match=r"by step 4 .*max_consecutive_skips"):
        train.train_and_evaluate(config, str(tmp_path))
    assert checkpoints.manager(str(tmp_path / "checkpoints")).all_steps() == []


def _checkpoint_states(directory):
    mngr = checkpoints.manager(directory)
    out = {s: mngr.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
           for s in mngr.all_steps()}
    mngr.close()
    return out


def _good(tree) -> bool:
    """Finite everywhere, parameters, synapses and BatchNorm statistics not exploding."""
    leaves = [np.asarray(x) for x in jax.tree.leaves(tree)]
    sized = [np.asarray(x) for k in ("params", "feedback", "batch_stats") if k in tree
             for x in jax.tree.leaves(tree[k])]
    return (all(np.isfinite(x).all() for x in leaves if np.issubdtype(x.dtype, np.inexact))
            and all(np.abs(x).max(initial=0) < steps.HEALTHY_LIMIT for x in sized))


@pytest.fixture(scope="module")
def trained_resnet_epoch(tmp_path_factory):
    """mode -> a ResNet smoke run's workdir after one sane epoch (checkpoints 10 and 16,
    best 16), made once per on_nonfinite mode (its optimizer state differs)."""
    made = {}

    def get(mode):
        if mode not in made:
            made[mode] = tmp_path_factory.mktemp(f"resnet_epoch_{mode}")
            config = smoke_config(fmnist_resnet18, num_epochs=1, on_nonfinite=mode,
                                  max_consecutive_skips=3)
            train.train_and_evaluate(config, str(made[mode]))
        return made[mode]

    return get


@pytest.mark.parametrize("family", ["mlp", "resnet"])
@pytest.mark.parametrize("mode", ["skip", "stop"])
def test_a_divergent_run_keeps_only_good_checkpoints(family, mode, tmp_path,
                                                     trained_resnet_epoch):
    """Raised to a divergent learning rate after a sane epoch, a run stops (skip: once the
    state itself goes bad or too many updates in a row are non-finite) and every checkpoint
    it calls good or best is finite and not exploding in everything it holds (params,
    synapses, BatchNorm statistics, optimizer state), so the same command with a sane rate
    resumes from a good state (a resumed run refuses a checkpoint that is not)."""
    import shutil  # noqa: PLC0415
    module = fmnist_resnet18 if family == "resnet" else None
    options = {"on_nonfinite": mode, "max_consecutive_skips": 3}
    if family == "resnet":
        shutil.copytree(trained_resnet_epoch(mode), tmp_path, dirs_exist_ok=True)
    else:
        train.train_and_evaluate(smoke_config(module, num_epochs=1, **options), str(tmp_path))
    lr = 100.0 if family == "resnet" else 1e6
    with pytest.raises(train.NonFiniteError, match="Nothing unusable was saved"):
        train.train_and_evaluate(smoke_config(module, **{"optim.lr": lr}, **options),
                                 str(tmp_path), allow_config_change=True)
    for sub in ("checkpoints", "best"):
        states = _checkpoint_states(str(tmp_path / sub))
        assert states and all(_good(state) for state in states.values()), sub
    # The MLP trains its second epoch from the good state; the ResNet (slow to compile)
    # restores it and evaluates.
    epochs = 1 if family == "resnet" else 2
    results = train.train_and_evaluate(smoke_config(module, num_epochs=epochs, **options),
                                       str(tmp_path), allow_config_change=True)
    assert results["steps"] == 16 * epochs and np.isfinite(results["test_loss"])


def test_a_checkpoint_that_is_not_good_is_refused_on_resume(tmp_path):
    """A checkpoint written before good meant good (NaN BatchNorm statistics, exploding
    weights) is not resumed from: the error names it and what to do; nothing is deleted."""
    train.train_and_evaluate(smoke_config(num_epochs=1), str(tmp_path))
    mngr = checkpoints.manager(str(tmp_path / "checkpoints"))
    restored = mngr.restore(16, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                         meta=ocp.args.JsonRestore()))
    state = restored["state"]
    state["params"]["layer_01"]["kernel"] = state["params"]["layer_01"]["kernel"] * 1e9
    checkpoints.save(mngr, 17, state, restored["meta"])
    mngr.close()
    with pytest.raises(checkpoints.CheckpointError,
                       match=r"step 17\) holds unusable tensors: params/layer_01/kernel "
                             r"\(exploding\)\. Move that step's directory aside"):
        train.train_and_evaluate(smoke_config(num_epochs=2), str(tmp_path))
    assert checkpoints.manager(str(tmp_path / "checkpoints")).all_steps() == [16, 17]


def test_a_skipped_batch_leaves_no_trace_in_the_batchnorm_statistics():
    """on_nonfinite="skip": a batch whose loss is non-finite updates neither the parameters
    nor the BatchNorm running statistics."""
    import functools  # noqa: PLC0415

    config = smoke_config(fmnist_resnet18, on_nonfinite="skip")
    setup = builder.create_setup(config, input_shape=(28, 28, 1), num_classes=10,
                                 total_steps=100, donate=False)
    step = jax.jit(functools.partial(steps.train_step, **setup.step_kwargs))
    images = np.full((config.batch_size, 28, 28, 1), 0.5, np.float32)
    labels = np.zeros((config.batch_size,), np.int32)
    state, m = step(setup.state, images * np.nan, labels)
    assert not bool(m["finite"])
    for before, after in zip(jax.tree.leaves((setup.state.params, setup.state.batch_stats)),
                             jax.tree.leaves((state.params, state.batch_stats)), strict=True):
        np.testing.assert_array_equal(before, after)
    state, m = step(state, images, labels)  # a finite batch moves them again
    assert bool(m["finite"]) and not all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(setup.state.batch_stats),
                                             jax.tree.leaves(state.batch_stats), strict=True))


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step == 20:
            raise OSError(28, "No space left on device")
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    with pytest.raises(checkpoints.CheckpointError,
                       match="No space left on device while saving step 20.*step 10"):
        train.train_and_evaluate(smoke_config(), str(tmp_path))
    assert checkpoints.manager(str(tmp_path / "checkpoints")).all_steps() == [10]


def test_resume_before_an_epochs_best_checkpoint_replaces_it(tmp_path, monkeypatch):
    # Stopped after epoch 1's best checkpoint (step 16) but before the next regular one
    # (step 20): the resume restarts at step 10, passes epoch 1's end again and must
    # replace best/16 rather than fail on it, then end where an uninterrupted run ends.
    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step == 20:
            raise KeyboardInterrupt  # as if killed
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    with pytest.raises(train.Interrupted, match=r"Interrupted at step 20; the last checkpoint "
                       r"is step 10 in .*stopped; re-run the same command to resume"):
        train.train_and_evaluate(smoke_config(), str(tmp_path / "stopped"))
    monkeypatch.undo()
    assert checkpoints.manager(str(tmp_path / "stopped/checkpoints")).all_steps() == [10]
    assert checkpoints.manager(str(tmp_path / "stopped/best")).all_steps() == [16]
    resumed = train.train_and_evaluate(smoke_config(), str(tmp_path / "stopped"))
    whole = train.train_and_evaluate(smoke_config(), str(tmp_path / "whole"))
    assert resumed["resumed_from_step"] == 10
    for key in ("test_accuracy", "test_loss", "best_val_accuracy", "best_step", "steps"):
        assert resumed[key] == whole[key], key
    assert (checkpoints.manager(str(tmp_path / "stopped/best")).all_steps()
            == checkpoints.manager(str(tmp_path / "whole/best")).all_steps())


def test_changed_config_is_refused_and_extension_allowed(tmp_path):
    first = train.train_and_evaluate(smoke_config(), str(tmp_path))
    with pytest.raises(rundir.ConfigChangedError, match=r"lra\.beta: 0\.1 -> 0\.2"):
        train.train_and_evaluate(smoke_config(**{"lra.beta": 0.2}), str(tmp_path))
    # A finished run with the same config is reported, not re-run.
    assert train.train_and_evaluate(smoke_config(), str(tmp_path)) == first
    # Raising num_epochs extends the run without a flag, from the final checkpoint.
    extended = train.train_and_evaluate(smoke_config(num_epochs=3), str(tmp_path))
    assert extended["resumed_from_step"] == 32 and extended["steps"] == 48
    assert [r["epoch"] for r in metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))] == [1, 2, 3]
    # Allowed explicitly, a changed beta resumes and config.json records the new value.
    changed = train.train_and_evaluate(smoke_config(num_epochs=4, **{"lra.beta": 0.2}),
                                       str(tmp_path), allow_config_change=True)
    assert changed["steps"] == 64
    assert json.load(open(tmp_path / "config.json"))["config"]["lra"]["beta"] == 0.2


def test_user_paths_expand_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    train.train_and_evaluate(smoke_config(num_epochs=1), "~/run")
    assert (tmp_path / "run" / "results.json").exists() and not (tmp_path / "~").exists()
    assert builder.expand("~/data") == str(tmp_path / "data")


def test_missing_dataset_fails_fast_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setitem(sources.input_pipeline.SYSTEM_DIRS, "mnist", ())
    for name in ("mnist", "cifar10"):
        with pytest.raises(DataError, match=f"No copy of '{name}' found"):
            sources.create_data(name)
    assert os.listdir(tmp_path) == []


def test_image_folder_source(tmp_path, monkeypatch):
    root = bad_inputs.write_folder(str(tmp_path / "photos"), per_class=6)
    cache = str(tmp_path / "cache")
    data = sources.create_data("cifar10", data_dir=root, val_size=3, cache_dir=cache)
    assert data.origin == f"folder:{root}" and data.num_classes == 3
    assert data.train.images.shape == (15, 32, 32, 3) and data.test.images.shape == (18, 32, 32, 3)
    np.testing.assert_array_equal(data.test.labels, np.repeat([0, 1, 2], 6))  # sorted names
    assert sorted(np.concatenate([data.train.labels, data.val.labels])) == sorted(
        np.repeat([0, 1, 2], 6))
    assert len(glob.glob(os.path.join(cache, "*.npz"))) == 1
    # The second load comes from the cache: no image is decoded.
    monkeypatch.setattr(folder, "decode_all", lambda *a, **k: pytest.fail("decoded again"))
    again = sources.create_data("cifar10", data_dir=root, val_size=3, cache_dir=cache)
    np.testing.assert_array_equal(again.train.images, data.train.images)
    # Grey 28x28 for the Fashion-MNIST entry point, from the same RGB folder.
    monkeypatch.undo()
    grey = sources.create_data("fashion_mnist", data_dir=root, val_size=3, cache_dir=cache)
    assert grey.train.images.shape == (15, 28, 28, 1)


def test_image_folder_trains_through_the_loop(tmp_path):
    root = bad_inputs.write_folder(str(tmp_path / "photos"), per_class=12)
    config = smoke_config(fmnist_resnet18, dataset="cifar10", num_epochs=1, batch_size=8,
                   **{"data.source": "folder", "data.dir": root, "data.val_size": 4,
                      "data.cache_dir": str(tmp_path / "cache"), "eval_batch_size": 16})
    results = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert results["data_source"] == f"folder:{root}" and results["steps"] == 4


def _events(directory):
    """(tag, step, value) of every scalar in the TensorBoard event files of `directory`."""
    from tensorboardX.proto import event_pb2

    out = []
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        data = open(path, "rb").read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                out.append((value.tag, event.step, value.simple_value))
    return out


def test_tensorboard_events(tmp_path):
    train.train_and_evaluate(smoke_config(log_every_steps=4, **{"diagnostics.cosine": True}),
                             str(tmp_path))
    events = _events(str(tmp_path / "tensorboard"))
    tags = {t for t, _, _ in events}
    assert {"train/loss", "train/accuracy", "lr", "val_accuracy", "val_loss",
            "cosine/layer_00"} <= tags
    assert sorted(s for t, s, _ in events if t == "train/loss") == [4, 8, 12, 16, 20, 24, 28, 32]
    records = metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))
    for record in records:
        assert ("val_accuracy", record["step"], pytest.approx(record["val_accuracy"])) in events


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("module,same_batches,layer", [
    ("experiments.fashion_mnist", True, 1),  # in memory
    ("experiments.fashion_mnist", True, 2),  # a ("data", "layer") mesh of 2 x 2
    ("tests.streaming_run", False, 1),  # the same data through StreamSource, process shards
])
def test_two_processes_train_like_one(tmp_path, module, same_batches, layer):
    """2 processes x 2 CPU devices (gloo collectives) run the same steps as one process with 4
    devices (with in-memory data, the same batches, so the same results), and only process 0
    writes files. Streaming sources shard their records by process, so batches differ. With
    `layer` 2 the state is split over a "layer" axis that spans the two processes."""
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo, JAX_PLATFORMS="cpu",
               JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    port, config = _free_port(), "configs/fmnist_mlp.py:smoke"
    mesh = [f"--config.mesh.layer={layer}"] if layer > 1 else []
    procs = [subprocess.Popen(
        [sys.executable, "-m", module, f"--config={config}", *mesh,
         f"--workdir={tmp_path / 'multi'}",
         "--distributed", f"--coordinator_address=localhost:{port}", "--num_processes=2",
         f"--process_id={i}"], cwd=repo, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True) for i in range(2)]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    single = subprocess.run([sys.executable, "-m", module, f"--config={config}", *mesh,
                             f"--workdir={tmp_path / 'single'}"], cwd=repo,
                            env=dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=4"),
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    multi = json.load(open(tmp_path / "multi" / "results.json"))
    ref = json.load(open(tmp_path / "single" / "results.json"))
    assert multi["steps"] == ref["steps"] and np.isfinite(multi["test_loss"])
    if same_batches:
        for key in ("test_accuracy", "test_loss", "best_val_accuracy", "best_step"):
            assert multi[key] == pytest.approx(ref[key], rel=1e-5), key
    resolved = json.load(open(tmp_path / "multi" / "config.json"))["resolved"]
    assert resolved["mesh"] == {"data": 4 // layer, "layer": layer}
    epochs = [r["epoch"] for r in metrics.read_jsonl(str(tmp_path / "multi" / "metrics.jsonl"))]
    assert epochs == sorted(set(epochs))  # one writer: no line twice


def test_image_folder_streams_through_the_imagenet_loop(tmp_path):
    """The ImageNet entry point reads a folder as a streaming source (random resized crops)."""
    from configs import resnet18

    root = bad_inputs.write_folder(str(tmp_path / "photos"), per_class=8)
    config = smoke_config(resnet18, **{"data.source": "auto", "data.dir": root,
                                       "data.val_size": 6, "batch_size": 6,
                                       "eval_batch_size": 6, "mesh.data": 2})
    data = builder.create_data(config)
    assert isinstance(data.train, sources.StreamSource) and data.num_classes == 3
    assert (len(data.train), len(data.val), len(data.test)) == (18, 6, 24)
    results = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert results["data_source"] == f"folder:{root}" and results["steps"] == 3


def test_scheduled_beta_trains_resumes_with_its_step_and_is_diagnosed_at_it(tmp_path):
    config = smoke_config(**{"lra.beta_schedule": "linear", "lra.beta": 0.3,
                             "lra.beta_final": 0.05, "lra.gamma_schedule": "cosine",
                             "lra.gamma_final": 0.5, "diagnostics.cosine": True})
    results = train.train_and_evaluate(config, str(tmp_path))
    assert np.isfinite(results["test_loss"]) and results["steps"] == 32
    lines = metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert all(np.isfinite(r["cosine/layer_00"]) for r in lines)
    setup = builder.create_setup(config, input_shape=(28, 28, 1), num_classes=10,
                                 total_steps=32, state_template=True)
    ckpt = checkpoints.Checkpoints(str(tmp_path))
    state = ckpt.restore_latest(setup.state)[0]
    ckpt.close()
    rule_state = state.opt_state[0]  # the schedules' step travels with the checkpoint
    assert int(rule_state.count) == 32
    # The values the last update (step 31 of 0..31) used, on the way to 0.05 and 0.5.
    for name, kind, start, final in (("beta", "linear", 0.3, 0.05),
                                     ("gamma", "cosine", 1.0, 0.5)):
        want = float(rules.schedule(kind, start, final, 32)(31))
        assert float(rule_state.hyperparams[name]) == pytest.approx(want, rel=1e-5)
        assert abs(want - final) < 0.01
