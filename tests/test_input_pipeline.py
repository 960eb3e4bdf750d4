"""Loading datasets: IDX files, CIFAR-10 batches, tfds mock data, and clear errors."""

import gzip
import os
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds

from rec_lra_jax import input_pipeline, sources
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
        labels = rng.permutation(np.arange(n) % 10)
        img_stem, lbl_stem = input_pipeline.IDX_STEMS[split]
        _write_idx(os.path.join(directory, img_stem), images, compress)
        _write_idx(os.path.join(directory, lbl_stem), labels, compress)
        arrays[split] = (images, labels)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip_and_splits(tmp_path, compress):
    arrays = make_idx_dir(str(tmp_path), compress=compress)
    data = sources.create_data("mnist", data_dir=str(tmp_path), val_size=10)
    assert data.train.images.shape == (50, 28, 28, 1)
    assert data.val.images.shape == (10, 28, 28, 1) and data.test.images.shape == (20, 28, 28, 1)
    assert data.train.images.dtype == np.uint8  # scaled to [0, 1] on the device
    np.testing.assert_array_equal(data.val.images[..., 0], arrays["train"][0][50:])
    np.testing.assert_array_equal(data.test.labels, arrays["test"][1])
    assert data.origin == f"idx:{tmp_path}" and data.num_classes == 10


def test_corrupt_idx_file_is_named(tmp_path):
    make_idx_dir(str(tmp_path), compress=False)
    path = os.path.join(tmp_path, "train-images-idx3-ubyte")
    with open(path, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(DataError, match="train-images-idx3-ubyte is corrupt"):
        sources.create_data("mnist", data_dir=str(tmp_path))
    with open(path, "wb") as f:
        f.write(b"not an idx file at all")
    with pytest.raises(DataError, match="not an IDX file"):
        sources.create_data("mnist", data_dir=str(tmp_path), source="idx")


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        sources.create_data("fashion_mnist", data_dir=str(tmp_path / "nope"))
    with pytest.raises(DataError, match="lacks"):
        sources.create_data("fashion_mnist", data_dir=str(tmp_path))


def test_no_source_names_every_option(tmp_path, monkeypatch):
    monkeypatch.setitem(input_pipeline.SYSTEM_DIRS, "fashion_mnist", (str(tmp_path / "none"),))
    with pytest.raises(DataError) as info:
        sources.create_data("fashion_mnist", download=False, tfds_data_dir=str(tmp_path / "tfds"))
    message = str(info.value)
    for option in ("--config.data.dir", "apt-get install dataset-fashion-mnist", "tfds"):
        assert option in message


def test_system_directory_is_found(tmp_path, monkeypatch):
    make_idx_dir(str(tmp_path))
    monkeypatch.setitem(input_pipeline.SYSTEM_DIRS, "fashion_mnist", (str(tmp_path),))
    data = sources.create_data("fashion_mnist", val_size=10, download=False)
    assert data.origin == f"idx:{tmp_path}" and len(data.train) == 50


def test_tfds_mock_data(monkeypatch):
    monkeypatch.setitem(input_pipeline.SYSTEM_DIRS, "mnist", ())
    with tfds.testing.mock_data(num_examples=40):
        data = sources.create_data("mnist", source="tfds", download=False, val_size=8)
    assert data.origin == "tfds"
    assert data.train.images.shape == (32, 28, 28, 1) and data.test.labels.shape == (40,)
    assert data.train.labels.dtype == np.int32


def test_bad_names():
    with pytest.raises(ValueError, match="Unknown dataset"):
        sources.create_data("cifar100")
    with pytest.raises(ValueError, match="Unknown data source"):
        sources.create_data("mnist", source="ftp")


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
    for name in input_pipeline.CIFAR_PY_FILES:
        batch = {b"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8),
                 b"labels": list(rng.permutation(10))}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)
    data = sources.create_data("cifar10", data_dir=str(tmp_path), val_size=5)
    assert data.train.images.shape == (45, 32, 32, 3) and data.val.labels.shape == (5,)
    assert data.test.images.shape == (10, 32, 32, 3)
    with open(root / "data_batch_3", "wb") as f:
        f.write(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3 is corrupt"):
        sources.create_data("cifar10", data_dir=str(tmp_path))
    (root / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch"):
        sources.create_data("cifar10", data_dir=str(tmp_path))


def test_cifar_binary_batches(tmp_path):
    root = tmp_path / "cifar-10-batches-bin"
    root.mkdir()
    rng = np.random.default_rng(0)
    written = {}
    for name in input_pipeline.CIFAR_BIN_FILES:
        labels = rng.permutation(10).astype(np.uint8)
        pixels = rng.integers(0, 256, (10, 3072), dtype=np.uint8)
        np.concatenate([labels[:, None], pixels], axis=1).tofile(root / name)
        written[name] = (labels, pixels)
    data = sources.create_data("cifar10", data_dir=str(tmp_path), val_size=5)
    assert data.origin == f"cifar:{tmp_path}"
    labels, pixels = written["test_batch.bin"]
    np.testing.assert_array_equal(data.test.labels, labels)
    np.testing.assert_array_equal(data.test.images[3],
                                  pixels[3].reshape(3, 32, 32).transpose(1, 2, 0))
    with open(root / "data_batch_2.bin", "ab") as f:
        f.write(b"xx")
    with pytest.raises(DataError, match="data_batch_2.bin is corrupt"):
        sources.create_data("cifar10", data_dir=str(tmp_path))
