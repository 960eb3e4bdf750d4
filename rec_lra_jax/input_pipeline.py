"""In-memory datasets (MNIST, Fashion-MNIST, CIFAR-10) from local files or tfds.

MNIST-family: IDX files (raw or .gz); CIFAR-10: the "python version" batches
(cifar-10-batches-py, as distributed at https://www.cs.toronto.edu/~kriz/cifar.html).
Both also load through `tfds.data_source`. Splits follow the paper (58k/2k/10k and
45k/5k/10k: the last `val_size` training examples are the validation set).
"""

import gzip
import os
import pickle
import struct
from typing import NamedTuple

import numpy as np
from absl import logging

IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Where distributions install the files (Debian/Ubuntu: apt-get install dataset-fashion-mnist).
SYSTEM_DIRS = {
    "fashion_mnist": ("/usr/share/datasets/fashion-mnist",),
    "mnist": ("/usr/share/datasets/mnist",),
}
CIFAR_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
               "test_batch")
DATASETS = (*SYSTEM_DIRS, "cifar10")
SOURCES = ("auto", "idx", "tfds")
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataError(RuntimeError):
    """No usable copy of a dataset, or a corrupt one."""


class Split(NamedTuple):
    images: np.ndarray  # float32 in [0, 1], shape (N, H, W, C)
    labels: np.ndarray  # int32, shape (N,)


class Dataset(NamedTuple):
    train: Split
    val: Split
    test: Split
    source: str  # where it came from, for logs and results.json


def read_idx(path: str) -> np.ndarray:
    """Reads one IDX file (raw or gzipped), checking its header against its size."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"Cannot read IDX file {path}: {e}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {data[:4]!r}).")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated inside its header.")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(
            f"{path} is corrupt: header says shape {shape} ({expected} bytes) "
            f"but the file has {len(data)} bytes."
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape)


def _find(directory: str, stem: str) -> str | None:
    dotted = stem.replace("-idx", ".idx")  # some mirrors name them train-images.idx3-ubyte
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def has_idx_files(directory: str) -> bool:
    """Whether `directory` holds the four standard IDX files (raw or .gz)."""
    return all(_find(directory, s) for stems in IDX_STEMS.values() for s in stems)


def load_idx_dir(directory: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Loads {"train", "test"} -> (uint8 images (N, H, W), labels) from an IDX directory."""
    if not os.path.isdir(directory):
        raise DataError(f"Data directory {directory!r} does not exist.")
    out = {}
    for split, stems in IDX_STEMS.items():
        paths = [_find(directory, s) for s in stems]
        missing = [s for s, p in zip(stems, paths, strict=True) if p is None]
        if missing:
            raise DataError(
                f"Data directory {directory!r} lacks {missing} (raw or .gz); it needs the four "
                f"standard IDX files: {[s for st in IDX_STEMS.values() for s in st]}."
            )
        images, labels = read_idx(paths[0]), read_idx(paths[1])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"IDX files in {directory!r} for split {split!r} disagree: images "
                f"{images.shape}, labels {labels.shape}."
            )
        out[split] = (images, labels)
    return out


def load_cifar_dir(directory: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Loads {"train", "test"} -> (uint8 images (N, 32, 32, 3), labels) from the CIFAR-10
    python batches in `directory` (or in its cifar-10-batches-py subdirectory)."""
    if not os.path.isdir(directory):
        raise DataError(f"Data directory {directory!r} does not exist.")
    nested = os.path.join(directory, "cifar-10-batches-py")
    if os.path.isdir(nested):
        directory = nested
    missing = [f for f in CIFAR_FILES if not os.path.isfile(os.path.join(directory, f))]
    if missing:
        raise DataError(f"{directory!r} lacks the CIFAR-10 python batches {missing} "
                        f"(extract cifar-10-python.tar.gz there).")
    batches = {}
    for name in CIFAR_FILES:
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            data = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32)
            labels = np.asarray(batch[b"labels"], np.int64)
        except Exception as e:  # truncated pickle, wrong file: all mean "corrupt"
            raise DataError(f"CIFAR-10 batch {path} is corrupt ({type(e).__name__}: {e}).") from e
        if len(data) != len(labels):
            raise DataError(f"CIFAR-10 batch {path} has {len(data)} images, {len(labels)} labels.")
        batches[name] = (data.transpose(0, 2, 3, 1), labels)
    train = [batches[f] for f in CIFAR_FILES[:-1]]
    return {"train": (np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])),
            "test": batches["test_batch"]}


def load_tfds(name: str, *, data_dir: str | None, download: bool) -> dict:
    """Loads {"train", "test"} through `tfds.data_source` (decoding needs TensorFlow)."""
    import tensorflow_datasets as tfds

    out = {}
    for split in ("train", "test"):
        # Random access needs array_record files (tfds prepares tfrecord by default).
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=download,
                                  builder_kwargs={"file_format": "array_record"})
        examples = [source[i] for i in range(len(source))]
        images = np.stack([np.asarray(ex["image"]) for ex in examples])
        labels = np.asarray([ex["label"] for ex in examples])
        out[split] = (images, labels)
    return out


def _to_split(images: np.ndarray, labels: np.ndarray) -> Split:
    images = images.astype(np.float32) / 255.0
    if images.ndim == 3:
        images = images[..., None]
    return Split(images, labels.astype(np.int32))


def split_train_val(raw: dict, val_size: int) -> tuple[Split, Split, Split]:
    """The paper's split: the last `val_size` training examples are the validation set."""
    images, labels = raw["train"]
    if not 0 <= val_size < len(images):
        raise ValueError(f"val_size {val_size} must be in [0, {len(images)}).")
    cut = len(images) - val_size
    train = _to_split(images[:cut], labels[:cut])
    val = _to_split(images[cut:], labels[cut:])
    return train, val, _to_split(*raw["test"])


def load_dataset(
    name: str,
    *,
    data_dir: str = "",
    source: str = "auto",
    download: bool = True,
    tfds_data_dir: str | None = None,
    val_size: int = 2000,
) -> Dataset:
    """Loads `name` from the first source that works.

    Order for source="auto": the IDX directory `data_dir` if given (an error there is
    final: a bad explicit path never falls through); the system directories in
    SYSTEM_DIRS; tfds, already prepared, or downloaded when `download`. "idx" and "tfds"
    restrict to one kind.

    Raises:
      DataError naming every option when no source works.
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {DATASETS}.")
    if source not in SOURCES:
        raise ValueError(f"Unknown data source {source!r}; choose one of {SOURCES}.")
    if data_dir:
        loader = load_cifar_dir if name == "cifar10" else load_idx_dir
        raw, origin = loader(data_dir), f"{'dir' if name == 'cifar10' else 'idx'}:{data_dir}"
    else:
        raw = origin = None
        if source in ("auto", "idx"):
            for d in SYSTEM_DIRS.get(name, ()):
                if has_idx_files(d):
                    raw, origin = load_idx_dir(d), f"idx:{d}"
                    break
        tried = ""
        if raw is None and source in ("auto", "tfds"):
            try:
                raw, origin = load_tfds(name, data_dir=tfds_data_dir, download=download), "tfds"
            except Exception as e:  # tfds raises many types; all mean "not available"
                tried = f" tfds said: {type(e).__name__}: {str(e)[:300]}"
                logging.warning("tfds could not load %s: %s", name, e)
        if raw is None:
            raise DataError(_no_source_message(name, download) + tried)
    train, val, test = split_train_val(raw, val_size)
    logging.info("Loaded %s from %s: %d train, %d val, %d test.", name, origin,
                 len(train.labels), len(val.labels), len(test.labels))
    return Dataset(train, val, test, origin)


def _no_source_message(name: str, download: bool) -> str:
    apt = {"fashion_mnist": "dataset-fashion-mnist"}.get(name)
    if name == "cifar10":
        options = ["point --config.data.dir at the extracted cifar-10-python.tar.gz "
                   "(the cifar-10-batches-py directory)"]
    else:
        options = [
            f"point --config.data.dir at a directory with the four IDX files "
            f"({', '.join(s for st in IDX_STEMS.values() for s in st)}, raw or .gz)",
        ]
    if apt:
        options.append(
            f"on Debian/Ubuntu: apt-get install {apt} (files land in {SYSTEM_DIRS[name][0]})")
    options.append(
        "install TensorFlow (pip install -e '.[tfds]') and let tfds "
        + ("download it (needs network)" if download
           else "download it: --config.data.download=True")
    )
    return f"No copy of {name!r} found. Options:\n  - " + "\n  - ".join(options) + "\n"


def synthetic_dataset(
    *, num_train: int = 512, num_val: int = 128, num_test: int = 256, image_size: int = 28,
    num_classes: int = 10, seed: int = 0, channels: int = 1,
) -> Dataset:
    """A learnable stand-in for MNIST (class prototypes plus noise) for smoke runs and tests."""
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(0.0, 1.0, (num_classes, image_size, image_size, channels))

    def make(n):
        labels = rng.integers(0, num_classes, n).astype(np.int32)
        noise = rng.normal(0.0, 0.3, (n, image_size, image_size, channels))
        return Split(np.clip(prototypes[labels] + noise, 0, 1).astype(np.float32), labels)

    return Dataset(make(num_train), make(num_val), make(num_test), "synthetic")


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The training order of one epoch, a function of (seed, epoch) so resuming replays it."""
    return np.random.default_rng([seed, epoch]).permutation(n)
