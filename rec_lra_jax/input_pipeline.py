"""Readers of whole datasets into memory: IDX files, CIFAR-10 batches, tfds, synthetic data.

Each reader returns {"train": (images, labels), "test": (images, labels)} with uint8
images (N, H, W[, C]) and integer labels. MNIST-family: the four IDX files (raw or .gz);
CIFAR-10: the binary version (cifar-10-batches-bin) or the python version
(cifar-10-batches-py, whose batches are pickles: Python code runs while they load, so read
only copies you trust, or use the binary version or an image folder); tfds: prepared
array_record data through `tfds.data_source` (no download unless asked for).
"""

import gzip
import os
import pickle
import struct

import numpy as np

IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Where distributions install the files (Debian/Ubuntu: apt-get install dataset-fashion-mnist).
SYSTEM_DIRS = {
    "fashion_mnist": ("/usr/share/datasets/fashion-mnist",),
    "mnist": ("/usr/share/datasets/mnist",),
}
CIFAR_PY_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                  "data_batch_5", "test_batch")
CIFAR_BIN_FILES = tuple(f"{n}.bin" for n in CIFAR_PY_FILES)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataError(RuntimeError):
    """No usable copy of a dataset, or a corrupt one."""


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


def idx_files(directory: str) -> dict[str, tuple[str, str]]:
    """{"train", "test"} -> (images path, labels path), or DataError naming what is missing."""
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
        out[split] = tuple(paths)
    return out


def load_idx_dir(directory: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Loads {"train", "test"} -> (uint8 images (N, H, W), labels) from an IDX directory."""
    out = {}
    for split, (image_path, label_path) in idx_files(directory).items():
        images, labels = read_idx(image_path), read_idx(label_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"IDX files in {directory!r} for split {split!r} disagree: images "
                f"{images.shape}, labels {labels.shape}."
            )
        out[split] = (images, labels)
    return out


def _cifar_dir(directory: str) -> tuple[str, str] | None:
    """(directory, "bin" | "py") of the CIFAR-10 batches in or under `directory`."""
    for sub, kind, files in (("cifar-10-batches-bin", "bin", CIFAR_BIN_FILES),
                             ("cifar-10-batches-py", "py", CIFAR_PY_FILES)):
        for d in (os.path.join(directory, sub), directory):
            if all(os.path.isfile(os.path.join(d, f)) for f in files):
                return d, kind
    return None


def has_cifar_files(directory: str) -> bool:
    return _cifar_dir(directory) is not None


def _read_cifar_bin(path: str) -> tuple[np.ndarray, np.ndarray]:
    data = np.fromfile(path, np.uint8)
    if data.size == 0 or data.size % 3073:
        raise DataError(f"CIFAR-10 batch {path} is corrupt: {data.size} bytes is not a whole "
                        f"number of 3073-byte records.")
    records = data.reshape(-1, 3073)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


def _read_cifar_py(path: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")  # noqa: S301 - see the module docstring
        data = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], np.int64)
    except Exception as e:  # truncated pickle, wrong file: all mean "corrupt"
        raise DataError(f"CIFAR-10 batch {path} is corrupt ({type(e).__name__}: {e}).") from e
    if len(data) != len(labels):
        raise DataError(f"CIFAR-10 batch {path} has {len(data)} images, {len(labels)} labels.")
    return data, labels


def load_cifar_dir(directory: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Loads {"train", "test"} -> (uint8 images (N, 32, 32, 3), labels) from the CIFAR-10
    binary batches (preferred: no pickles) or the python batches in or under `directory`."""
    if not os.path.isdir(directory):
        raise DataError(f"Data directory {directory!r} does not exist.")
    found = _cifar_dir(directory)
    if found is None:
        raise DataError(f"{directory!r} lacks the CIFAR-10 batches: extract "
                        f"cifar-10-binary.tar.gz ({', '.join(CIFAR_BIN_FILES)}) or "
                        f"cifar-10-python.tar.gz ({', '.join(CIFAR_PY_FILES)}) there.")
    root, kind = found
    reader, files = (_read_cifar_bin, CIFAR_BIN_FILES) if kind == "bin" else (
        _read_cifar_py, CIFAR_PY_FILES)
    batches = [reader(os.path.join(root, f)) for f in files]
    to_nhwc = lambda b: (b[0].transpose(0, 2, 3, 1), b[1])
    train = [to_nhwc(b) for b in batches[:-1]]
    return {"train": (np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])),
            "test": to_nhwc(batches[-1])}


def load_tfds(name: str, *, data_dir: str | None, download: bool,
              splits=("train", "test")) -> dict:
    """Loads {"train", "test"} through `tfds.data_source` (array_record, random access)."""
    import tensorflow_datasets as tfds  # noqa: PLC0415 - heavy; only this source needs it

    out = {}
    for key, split in zip(("train", "test"), splits, strict=True):
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=download,
                                  builder_kwargs={"file_format": "array_record"})
        examples = [source[i] for i in range(len(source))]
        images = np.stack([np.asarray(ex["image"]) for ex in examples])
        labels = np.asarray([ex["label"] for ex in examples])
        out[key] = (images, labels)
    return out


def synthetic_arrays(shape, num_classes: int, *, seed: int, num_train: int = 512,
                     num_val: int = 128, num_test: int = 256) -> dict:
    """A learnable stand-in (class prototypes plus noise) for smoke runs and tests.

    {"train", "val", "test"} -> (float32 images in [0, 1], int32 labels).
    """
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(0.0, 1.0, (num_classes, *shape))

    def make(n):
        labels = rng.integers(0, num_classes, n).astype(np.int32)
        noise = rng.normal(0.0, 0.3, (n, *shape))
        return np.clip(prototypes[labels] + noise, 0, 1).astype(np.float32), labels

    return {"train": make(num_train), "val": make(num_val), "test": make(num_test)}


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The training order of one epoch, a function of (seed, epoch) so resuming replays it."""
    return np.random.default_rng([seed, epoch]).permutation(n)
