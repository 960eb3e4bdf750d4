"""Smoke runs of the CIFAR-10 and ImageNet entry points (synthetic and tfds mock data)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rec_lra_jax import imagenet_input
from rec_lra_jax.input_pipeline import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(module, config, workdir, *flags):
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-m", module, f"--config={config}",
                           f"--workdir={workdir}", *flags], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("module,config,keys", [
    ("experiments.cifar10", "configs/cifar10_resnet18.py:smoke", ("test_accuracy",)),
    ("experiments.imagenet", "configs/resnet18.py:smoke", ("val_top1", "val_top5")),
    ("experiments.imagenet", "configs/resnet50.py:smoke", ("val_top1", "val_top5")),
])
def test_smoke_entry_points(tmp_path, module, config, keys):
    proc = _run(module, config, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    for key in keys:
        assert 0.0 <= results[key] <= 1.0
    assert results["steps"] > 0


def test_imagenet_without_data_explains_how_to_prepare(tmp_path):
    with pytest.raises(DataError, match="tfds build imagenet2012 --manual_dir"):
        imagenet_input.open_split("train", data_dir=str(tmp_path))


def test_imagenet_preprocessing_shapes_and_order():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    assert imagenet_input.random_resized_crop(rng, image, 16).shape == (16, 16, 3)
    gray = rng.integers(0, 256, (30, 20), dtype=np.uint8)
    assert imagenet_input.center_crop(gray, 16).shape == (16, 16, 3)
    source = [{"image": image, "label": i} for i in range(10)]
    train = list(imagenet_input.batches(source, batch_size=4, size=8, train=True, seed=0,
                                        epoch=0, workers=2))
    assert len(train) == 2 and train[0][0].shape == (4, 8, 8, 3)
    resumed = list(imagenet_input.batches(source, batch_size=4, size=8, train=True, seed=0,
                                          epoch=0, skip=1, workers=2))
    np.testing.assert_array_equal(resumed[0][1], train[1][1])
    np.testing.assert_array_equal(resumed[0][0], train[1][0])
    evals = list(imagenet_input.batches(source, batch_size=4, size=8, train=False, seed=0,
                                        epoch=0, workers=2))
    assert [len(b[1]) for b in evals] == [4, 4, 2]


def test_compare_tabulates_rules_with_epochs_to_threshold(tmp_path):
    proc = _run("experiments.compare", "configs/fmnist_mlp.py:smoke", tmp_path,
                "--rules=rec_lra,bp", "--reach=0.5", "--config.optim.lr=3e-3",
                "--config.num_epochs=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "comparison.md").read_text()
    assert "epochs to 50 % val" in table
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert [r["rule"] for r in saved] == ["rec_lra", "bp"]
    for r in saved:  # the column agrees with each rule's own metrics.jsonl
        lines = [json.loads(x) for x in open(tmp_path / r["rule"] / "metrics.jsonl")]
        first = next((x["epoch"] for x in lines if x["val_accuracy"] >= 0.5), None)
        assert r["epochs_to"] == first
        assert f"| {r['rule']} | {100 * r['test_accuracy']:.2f} |" in table
    assert any(r["epochs_to"] is not None for r in saved)  # synthetic data: reached early
