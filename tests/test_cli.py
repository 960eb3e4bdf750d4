"""The entry points: smoke runs of every dataset's shell, compare, benchmark, streaming."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from rec_lra_jax import preprocessing, sources
from rec_lra_jax.input_pipeline import DataError

pytestmark = pytest.mark.slow  # the command line in subprocesses

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(module, config, workdir, *flags, devices=None):
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("XLA_FLAGS", None)
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    workdir_flag = [f"--workdir={workdir}"] if workdir is not None else []
    return subprocess.run([sys.executable, "-m", module, f"--config={config}", *workdir_flag,
                           *flags], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.parametrize("module,config", [
    ("experiments.cifar10", "configs/cifar10_resnet18.py:smoke"),
    ("experiments.imagenet", "configs/resnet18.py:smoke"),
    ("experiments.imagenet", "configs/resnet50.py:smoke"),
])
def test_smoke_entry_points(tmp_path, module, config):
    # CIFAR-10 runs the Kolen-Pollack chain (rule kp), whose weight-mirrored synapses the
    # alignment check below can hold to backprop's gradient; the others the config's rule.
    rule = ("--config.rule=kp",) if module == "experiments.cifar10" else ()
    first = proc = _run(module, config, tmp_path, *rule)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    for key in ("test_accuracy", "test_top5", "best_val_accuracy"):
        assert 0.0 <= results[key] <= 1.0
    assert results["steps"] > 0
    assert os.listdir(tmp_path / "tensorboard")
    if module == "experiments.cifar10":  # the trained run's per-tensor alignment
        proc = _run("experiments.alignment", config, tmp_path, "--betas=0.5,0.001", *rule)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines()
                if line.startswith("| [")]
        cos = {name.strip(): [float(v) for v in values] for name, *values in rows}
        assert "['stem']['bn']['bias']" in cos and len(cos["['head']['kernel']"]) == 2
        # Weight-mirror synapses, tracked by Kolen-Pollack: at a tiny beta every kernel's
        # delta lies along backprop's gradient.
        kernels = [v[1] for name, v in cos.items() if name.endswith("['kernel']")]
        assert cos["['head']['kernel']"][1] > 0.99 and min(kernels) > 0.9, cos
        assert "Weight mirror" not in proc.stderr  # it restores the synapses
        missing = tmp_path / "no_run"
        proc = _run("experiments.alignment", config, missing, *rule)
        assert proc.returncode == 1 and "holds no checkpoint" in proc.stderr
        assert not missing.exists()  # nothing created
        # The run as if killed after its first checkpoint: the resume restores the
        # synapses, so it skips the weight mirror (minutes at ImageNet scale), and it ends
        # exactly where the uninterrupted run did.
        assert "Weight mirror: done" in first.stderr
        kept = sorted((d for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()), key=int)
        assert len(kept) == 2, kept
        shutil.rmtree(tmp_path / "checkpoints" / kept[1])
        # best/ keeps a step after kept[0]: the resume passes it again and replaces it.
        assert any(int(b) > int(kept[0]) for b in os.listdir(tmp_path / "best") if b.isdigit())
        os.remove(tmp_path / "results.json")
        proc = _run(module, config, tmp_path, *rule)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Weight mirror" not in proc.stderr
        with open(tmp_path / "results.json") as f:
            resumed = json.load(f)
        assert resumed["resumed_from_step"] == int(kept[0])
        for key in ("test_accuracy", "test_loss", "best_val_accuracy", "steps"):
            assert resumed[key] == results[key], key


def test_imagenet_without_data_explains_how_to_prepare(tmp_path):
    with pytest.raises(DataError, match="tfds build imagenet2012 --manual_dir"):
        sources.create_data("imagenet2012", tfds_data_dir=str(tmp_path))


def test_imagenet_preprocessing_shapes():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    assert preprocessing.random_resized_crop(rng, image, 16).shape == (16, 16, 3)
    gray = preprocessing.to_channels(rng.integers(0, 256, (30, 20), dtype=np.uint8), 3)
    assert preprocessing.center_crop(gray, 16).shape == (16, 16, 3)


@pytest.mark.parametrize("threads,processes", [(1, 0), (3, 0), (1, 2)])
def test_stream_source_order_resume_and_shards(threads, processes):
    records = sources.SyntheticRecords(22, 5, seed=0, size=16)
    make = lambda shard=(0, 1): sources.StreamSource(
        records, train_map=preprocessing.InceptionTrain(8),
        eval_map=preprocessing.CenterCropEval(8), threads=threads, processes=processes,
        shard=shard)
    train = list(make().train_batches(seed=0, epoch=0, batch_size=4))
    assert len(train) == 5 and train[0][0].shape == (4, 8, 8, 3) and train[0][0].dtype == np.uint8
    resumed = list(make().train_batches(seed=0, epoch=0, batch_size=4, start=2))
    for a, b in zip(train[2:], resumed, strict=True):  # resuming replays the same batches
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    other = list(make().train_batches(seed=0, epoch=1, batch_size=4))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(train, other, strict=True))
    assert [len(b[1]) for b in make().eval_batches(8)] == [8, 8, 6]
    # Two processes: each reads its own half, in batches of 2, the same number of steps.
    halves = [list(make((i, 2)).train_batches(seed=0, epoch=0, batch_size=4)) for i in range(2)]
    assert len(halves[0]) == len(halves[1]) == 5 and halves[0][0][0].shape[0] == 2
    evals = [np.concatenate([b[1] for b in make((i, 2)).eval_batches(4)]) for i in range(2)]
    assert sorted(np.concatenate(evals)) == sorted(records[i]["label"] for i in range(22))


def test_compare_tabulates_rules_with_epochs_to_threshold(tmp_path):
    proc = _run("experiments.compare", "configs/fmnist_mlp.py:smoke", tmp_path,
                "--rules=rec_lra,bp", "--reach=0.5", "--config.optim.lr=3e-3",
                "--config.num_epochs=3", "--config.diagnostics.cosine=True",
                "--config.diagnostics.test_curve=True")
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "comparison.md").read_text()
    assert "epochs to 50 % val" in table
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert [r["rule"] for r in saved] == ["rec_lra", "bp"]
    for r in saved:  # the column agrees with each rule's own metrics.jsonl
        lines = [json.loads(x) for x in open(tmp_path / r["rule"] / "metrics.jsonl")]
        first = next((x["epoch"] for x in lines if x["val_accuracy"] >= 0.5), None)
        assert r["epochs_to"] == first
        # each row names the wiring and its target hops (MLP: rec-LRA 2, backprop 3)
        assert r["target_hops"] == {"rec_lra": 2, "bp": 3}[r["rule"]]
        assert (f"| {r['rule']} | {r['wiring']} | {r['target_hops']} | "
                f"{100 * r['test_accuracy']:.2f} |") in table
        # "epochs to bp - 1": the first epoch within 1 point of backprop's final val.
        bp_final = json.loads(open(tmp_path / "bp" / "metrics.jsonl").readlines()[-1])
        target = bp_final["val_accuracy"] - 0.01
        assert r["epochs_to_bp"] == next(
            (x["epoch"] for x in lines if x["val_accuracy"] >= target), None)
        assert all("test_accuracy" in x for x in lines)  # diagnostics.test_curve
    assert any(r["epochs_to"] is not None for r in saved)  # synthetic data: reached early
    assert "epochs to bp - 1" in table
    for name in ("curves.png", "cosine.png", "time.png"):  # experiments.plot ran at the end
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    # Re-run with another learning rate: refused, never the old table.
    again = _run("experiments.compare", "configs/fmnist_mlp.py:smoke", tmp_path,
                 "--rules=rec_lra,bp", "--config.optim.lr=1e-2", "--config.num_epochs=3")
    assert again.returncode == 1
    assert "optim.lr: 0.003 -> 0.01" in again.stderr and "Traceback" not in again.stderr


def test_benchmark_times_every_rule_of_the_family():
    proc = _run("experiments.benchmark_step", "configs/fmnist_mlp.py:smoke", None,
                "--steps=2", "--repeats=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Three tables, each one row per rule in registry order: step time, where memory goes,
    # XLA's static cost.
    tables = _tables(proc.stdout)
    family = ["rec_lra", "lra_e", "kp", "dfa", "bp", "fa", "sign_symmetry"]  # rules.RULES
    assert [[row[0] for row in table] for table in tables] == [family] * 3
    cost = {row[0]: row for row in tables[2]}
    assert cost["bp"][2] == cost["bp"][4] == cost["bp"][6] == "1.00"
    assert all(float(row[1]) > 0 and int(row[5]) > 0 for row in cost.values())


def _tables(stdout):
    """The markdown tables of a benchmark's output: their rows' cells, headers left out."""
    return [[[c.strip() for c in line.split("|")[1:-1]] for line in block.splitlines()
             if line.startswith("| ") and not line.startswith(("| rule", "| ---"))]
            for block in stdout.split("\n\n") if "| rule" in block]


def test_benchmark_memory_only_compiles_and_reports_without_timing():
    proc = _run("experiments.benchmark_step", "configs/fmnist_mlp.py:smoke", None,
                "--steps=1", "--notime",
                "--rules=rec_lra,rec_lra+grouped+shared,rec_lra+layer4,bp",
                "--config.model.hidden=(512,512,512)", devices=4)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ms / step" not in proc.stdout and "not run" in proc.stdout
    memory, cost = _tables(proc.stdout)  # where the memory goes; XLA's static cost
    rows = ["rec_lra", "rec_lra+grouped+shared", "rec_lra+layer4", "bp"]
    assert [r[0] for r in memory] == [r[0] for r in cost] == rows
    assert memory[3][-1] == "1.00"
    # the shared row keeps fewer optimizer moments for its synapses (an MLP's twins)
    assert float(memory[1][4]) < float(memory[0][4]), memory
    # on a 1 x 4 ('data', 'layer') mesh each device holds about a quarter of the state
    assert float(memory[2][1]) < 0.3 * float(memory[0][1]), memory
    for bad, says in (("bp+grouped", "only local rules"), ("rec_lra+fast", "unknown suffix")):
        proc = _run("experiments.benchmark_step", "configs/fmnist_mlp.py:smoke", None,
                    "--steps=1", "--notime", f"--rules={bad}")
        assert proc.returncode == 1 and says in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr


def test_plot_command_without_runs_is_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-m", "experiments.plot", f"--workdir={tmp_path}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "No metrics.jsonl" in proc.stderr and "Traceback" not in proc.stderr


def test_ablate_ranks_settings_on_validation_only(tmp_path):
    proc = _run("experiments.ablate", "configs/fmnist_mlp.py:smoke", tmp_path,
                "--vary=lra.beta=0.05,0.3;model.activation=relu", "--config.num_epochs=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((tmp_path / "ablation.json").read_text())
    names = [r["setting"] for r in saved["rows"]]
    assert names == ["base", "lra.beta=0.05", "lra.beta=0.3", "model.activation=relu"]
    assert saved["chosen"] == max(saved["rows"], key=lambda r: r["val_mean"])["setting"]
    for r in saved["rows"]:  # each row is its own run's results.json
        name = r["setting"].replace("/", "_")
        result = json.loads((tmp_path / name / "seed0" / "results.json").read_text())
        assert r["val_mean"] == result["best_val_accuracy"]
    saved_config = tmp_path / "model.activation=relu" / "seed0" / "config.json"
    relu = json.loads(saved_config.read_text())["config"]
    assert relu["model"]["activation"] == "relu" and relu["lra"]["beta"] == 0.1
    bad = _run("experiments.ablate", "configs/fmnist_mlp.py:smoke", tmp_path / "bad",
               "--vary=lra.beta=0.2;lra.skip_source=head")
    assert bad.returncode == 1 and "lra.skip_source is not a key" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()
