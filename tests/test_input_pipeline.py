"""Loading MNIST-family data: synthetic IDX files, tfds mock data, and clear errors."""

import gzip
import os
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds

from rec_lra_jax import input_pipeline
from rec_lra_jax.input_pipeline import DataError


def _write_idx(path, array, compress):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape)
    opener = gzip.open if compress else open
    with opener(path + (".gz" if compress else ""), "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_idx_dir(directory, n_train=60, n_test=20, compress=True, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 28, 28))
        labels = rng.integers(0, 10, n)
        img_stem, lbl_stem = input_pipeline.IDX_STEMS[split]
        _write_idx(os.path.join(directory, img_stem), images, compress)
        _write_idx(os.path.join(directory, lbl_stem), labels, compress)
        arrays[split] = (images, labels)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip_and_splits(tmp_path, compress):
    arrays = make_idx_dir(str(tmp_path), compress=compress)
    data = input_pipeline.load_dataset("mnist", data_dir=str(tmp_path), val_size=10)
    assert data.train.images.shape == (50, 28, 28, 1)
    assert data.val.images.shape == (10, 28, 28, 1) and data.test.images.shape == (20, 28, 28, 1)
    assert data.train.images.dtype == np.float32 and data.train.images.max() <= 1.0
    np.testing.assert_allclose(data.val.images[..., 0] * 255, arrays["train"][0][50:], atol=1e-3)
    np.testing.assert_array_equal(data.test.labels, arrays["test"][1])
    assert data.source == f"idx:{tmp_path}"


def test_corrupt_idx_file_is_named(tmp_path):
    make_idx_dir(str(tmp_path), compress=False)
    path = os.path.join(tmp_path, "train-images-idx3-ubyte")
    with open(path, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(DataError, match="train-images-idx3-ubyte is corrupt"):
        input_pipeline.load_dataset("mnist", data_dir=str(tmp_path))
    with open(path, "wb") as f:
        f.write(b"not an idx file at all")
    with pytest.raises(DataError, match="not an IDX file"):
        input_pipeline.load_dataset("mnist", data_dir=str(tmp_path))


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        input_pipeline.load_dataset("fashion_mnist", data_dir=str(tmp_path / "nope"))
    with pytest.raises(DataError, match="lacks"):
        input_pipeline.load_dataset("fashion_mnist", data_dir=str(tmp_path))


def test_no_source_names_every_option(tmp_path, monkeypatch):
    monkeypatch.setitem(input_pipeline.SYSTEM_DIRS, "fashion_mnist", (str(tmp_path / "none"),))
    with pytest.raises(DataError) as info:
        input_pipeline.load_dataset("fashion_mnist", download=False,
                                    tfds_data_dir=str(tmp_path / "tfds"))
    message = str(info.value)
    for option in ("--config.data.dir", "apt-get install dataset-fashion-mnist", "tfds"):
        assert option in message


def test_system_directory_is_found(tmp_path, monkeypatch):
    make_idx_dir(str(tmp_path))
    monkeypatch.setitem(input_pipeline.SYSTEM_DIRS, "fashion_mnist", (str(tmp_path),))
    data = input_pipeline.load_dataset("fashion_mnist", val_size=10, download=False)
    assert data.source == f"idx:{tmp_path}" and len(data.train.labels) == 50


def test_tfds_mock_data(monkeypatch):
    monkeypatch.setitem(input_pipeline.SYSTEM_DIRS, "mnist", ())
    with tfds.testing.mock_data(num_examples=40):
        data = input_pipeline.load_dataset("mnist", source="tfds", download=False, val_size=8)
    assert data.source == "tfds"
    assert data.train.images.shape == (32, 28, 28, 1) and data.test.labels.shape == (40,)
    assert data.train.labels.dtype == np.int32


def test_bad_names():
    with pytest.raises(ValueError, match="Unknown dataset"):
        input_pipeline.load_dataset("cifar100")
    with pytest.raises(ValueError, match="Unknown data source"):
        input_pipeline.load_dataset("mnist", source="ftp")


def test_epoch_permutation_is_replayable():
    a = input_pipeline.epoch_permutation(0, 3, 100)
    np.testing.assert_array_equal(a, input_pipeline.epoch_permutation(0, 3, 100))
    assert not np.array_equal(a, input_pipeline.epoch_permutation(0, 4, 100))
    assert sorted(a) == list(range(100))


def test_cifar_python_batches(tmp_path):
    import pickle

    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in input_pipeline.CIFAR_FILES:
        batch = {b"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8),
                 b"labels": list(rng.integers(0, 10, 10))}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)
    data = input_pipeline.load_dataset("cifar10", data_dir=str(tmp_path), val_size=5)
    assert data.train.images.shape == (45, 32, 32, 3) and data.val.labels.shape == (5,)
    assert data.test.images.shape == (10, 32, 32, 3)
    assert data.train.images.max() <= 1.0
    with open(root / "data_batch_3", "wb") as f:
        f.write(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3 is corrupt"):
        input_pipeline.load_dataset("cifar10", data_dir=str(tmp_path))
    (root / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch"):
        input_pipeline.load_dataset("cifar10", data_dir=str(tmp_path))
