"""Image-folder datasets: DIR/train/<class>/* and DIR/test/<class>/* (or val/), JPEG or PNG.

Classes are the train folder's sub-folder names in sorted order (label k = k-th name).
The training files come in a fixed pseudo-random order (seed 0, independent of the run's
seed), so the validation split carved from their end mixes every class. Two ways to read:
- `load_arrays`: decode every image at a fixed size on parallel grain reader threads and
  cache the arrays (a .npz keyed by the file list, sizes, mtimes and shape), for datasets
  that fit in memory (CIFAR-10- or Fashion-MNIST-sized folders);
- `FileRecords`: a random-access source of encoded files for a streaming grain pipeline
  (ImageNet-sized folders, `sources.StreamSource`).
"""

import hashlib
import json
import os
import tempfile

import numpy as np
from absl import logging

from rec_lra_jax import preprocessing
from rec_lra_jax.input_pipeline import DataError

EXTENSIONS = (".jpg", ".jpeg", ".png")
TEST_DIRS = ("test", "val", "validation")


class FileRecords:
    """Random-access records {"image": bytes, "label": int, "name": path} over a file list."""

    def __init__(self, files: list[str], labels: np.ndarray):
        self.files, self.labels = list(files), np.asarray(labels, np.int32)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path = self.files[index]
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise DataError(f"Cannot read image {path}: {e}") from e
        return {"image": data, "label": int(self.labels[index]), "name": path}

    def subset(self, index) -> "FileRecords":
        return FileRecords([self.files[i] for i in np.arange(len(self))[index]],
                           self.labels[index])


def _class_files(split_dir: str) -> dict[str, list[str]]:
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    if not classes:
        raise DataError(f"{split_dir} has no class folders; expected {split_dir}/<class>/*.jpg.")
    out = {}
    for name in classes:
        folder = os.path.join(split_dir, name)
        files = sorted(e.path for e in os.scandir(folder)
                       if e.is_file() and e.name.lower().endswith(EXTENSIONS))
        if not files:
            raise DataError(f"Class folder {folder} holds no JPEG or PNG images.")
        out[name] = files
    return out


def scan(directory: str) -> tuple[dict[str, FileRecords], tuple[str, ...]]:
    """{"train", "test"} -> FileRecords and the class names, with every layout error named.

    Raises:
      DataError: no such directory, no train/ or test/ (val/) folder, a class folder with
        no images, fewer than two classes, or class sets that differ between the splits.
    """
    if not os.path.isdir(directory):
        raise DataError(f"Data directory {directory!r} does not exist.")
    train_dir = os.path.join(directory, "train")
    test_dir = next((os.path.join(directory, d) for d in TEST_DIRS
                     if os.path.isdir(os.path.join(directory, d))), None)
    if not os.path.isdir(train_dir) or test_dir is None:
        raise DataError(f"{directory!r} is not an image-folder dataset: it needs train/<class>/* "
                        f"and test/<class>/* (or val/ or validation/).")
    train, test = _class_files(train_dir), _class_files(test_dir)
    if set(train) != set(test):
        raise DataError(
            f"The class folders of {train_dir} and {test_dir} differ: only in train: "
            f"{sorted(set(train) - set(test))}, only in {os.path.basename(test_dir)}: "
            f"{sorted(set(test) - set(train))}.")
    classes = tuple(sorted(train))
    if len(classes) < 2:
        raise DataError(f"{train_dir} holds {len(classes)} class folder(s) {list(classes)}: a "
                        f"classifier needs at least two (train/<class>/*, one folder per "
                        f"class).")
    splits = {}
    for split, files_by_class in (("train", train), ("test", test)):
        files = [f for c in classes for f in files_by_class[c]]
        labels = np.concatenate([np.full(len(files_by_class[c]), k, np.int32)
                                 for k, c in enumerate(classes)])
        splits[split] = FileRecords(files, labels)
    order = np.random.default_rng(0).permutation(len(splits["train"]))
    splits["train"] = splits["train"].subset(order)
    return splits, classes


def is_folder_dataset(directory: str) -> bool:
    """Whether `directory` looks like an image-folder tree (has train/ and test/ or val/)."""
    return os.path.isdir(os.path.join(directory, "train")) and any(
        os.path.isdir(os.path.join(directory, d)) for d in TEST_DIRS)


def default_cache_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                        "rec_lra_jax")


def _cache_key(records: dict[str, FileRecords], shape) -> str:
    digest = hashlib.sha256(json.dumps(list(shape)).encode())
    for split in sorted(records):
        for path in records[split].files:
            stat = os.stat(path)
            digest.update(f"{split}\0{os.path.abspath(path)}\0{stat.st_size}\0"
                          f"{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def decode_all(records: FileRecords, shape, *, threads: int = 0) -> np.ndarray:
    """Every image of `records` decoded and resized to `shape`, uint8 (N, H, W, C).

    Decoding runs in chunks of 256 on `threads` grain reader threads (0: one per core).
    An undecodable file raises DataError naming it.
    """
    grain = preprocessing.import_grain()
    ds = grain.MapDataset.source(records).map(preprocessing.FixedSize(shape)).batch(256)
    iterator = preprocessing.grain_iterator(ds, threads=threads)
    chunks = []
    try:
        for batch in iterator:
            chunks.append(np.array(batch["image"]))
    except preprocessing.DecodeError as e:
        raise DataError(f"Unreadable image in the dataset: {e}") from e
    finally:
        if hasattr(iterator, "close"):
            iterator.close()
    return np.concatenate(chunks) if chunks else np.zeros((0, *shape), np.uint8)


def load_arrays(directory: str, shape, *, threads: int = 0,
                cache_dir: str = "") -> tuple[dict, tuple[str, ...]]:
    """{"train", "test"} -> (uint8 images at `shape`, int32 labels) and the class names.

    The decoded arrays are cached in `cache_dir` (default ~/.cache/rec_lra_jax); a cache
    that cannot be written only costs the decoding next time, and one that cannot be read
    (truncated, damaged) is rebuilt with a warning.
    """
    records, classes = scan(directory)
    cache_dir = os.path.expanduser(cache_dir or default_cache_dir())
    path = os.path.join(cache_dir, f"folder-{_cache_key(records, shape)}.npz")
    if os.path.isfile(path):
        try:
            with np.load(path) as cached:
                raw = {s: (cached[f"{s}_images"], cached[f"{s}_labels"]) for s in records}
            for s, (images, labels) in raw.items():
                if (images.shape != (len(records[s]), *shape) or labels.shape
                        != (len(records[s]),) or not np.array_equal(labels, records[s].labels)):
                    raise ValueError(f"its {s} arrays do not match the {len(records[s])} "
                                     f"images of {directory}")
            logging.info("Loaded the decoded images of %s from the cache %s.", directory, path)
            return raw, classes
        except Exception as e:  # noqa: BLE001 (a truncated .npz raises zipfile, EOF, OS errors)
            logging.warning("The image cache %s is unreadable (%s: %s); decoding the images "
                            "again and rebuilding it.", path, type(e).__name__, e)
    raw = {s: (decode_all(r, shape, threads=threads), r.labels) for s, r in records.items()}
    _write_cache(path, raw)
    return raw, classes


def _write_cache(path: str, raw: dict) -> None:
    arrays = {f"{s}_{k}": a for s, (images, labels) in raw.items()
              for k, a in (("images", images), ("labels", labels))}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), suffix=".npz",
                                         delete=False) as f:
            np.savez(f, **arrays)
        os.replace(f.name, path)
        logging.info("Cached the decoded images in %s.", path)
    except OSError as e:
        logging.warning("Could not write the image cache %s (%s); decoding again next time.",
                        path, e)
