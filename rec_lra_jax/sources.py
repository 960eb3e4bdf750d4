"""Datasets as batch sources: the facts of each dataset, and the one protocol the loop reads.

`create_data(...)` returns a `Data` of three sources (train, val, test). A source is
either in memory (`ArraySource`: IDX, CIFAR-10 batches, decoded image folders, synthetic
data; held on the device, batches are row indices) or streaming (`StreamSource`: tfds
array_record files, large image folders, synthetic records, read, decoded and augmented by
grain worker processes, batches are arrays). Both implement `BatchSource`. The validation
split is the last `val_size` training examples (the paper's 58k/2k/10k and 45k/5k/10k).
"""

import os
from collections.abc import Iterator
from typing import Any, NamedTuple, Protocol

import numpy as np
from absl import logging

from rec_lra_jax import folder, input_pipeline, preprocessing
from rec_lra_jax.input_pipeline import DataError


class DatasetInfo(NamedTuple):
    """What the loop needs to know about a dataset before reading it."""

    image_shape: tuple[int, int, int]  # streaming datasets: the default crop (data.image_size)
    num_classes: int
    val_size: int  # the standard validation split, carved from the end of train
    test_split: str  # the tfds split used as the test set
    streaming: bool  # too large for memory: grain pipeline with random-resized crops
    local: str  # the file format data.dir holds besides image folders: "idx" | "cifar" | ""
    normalization: str  # "unit" (x / 255) | "imagenet" (channel mean and std)


DATASETS = {
    "mnist": DatasetInfo((28, 28, 1), 10, 2000, "test", False, "idx", "unit"),
    "fashion_mnist": DatasetInfo((28, 28, 1), 10, 2000, "test", False, "idx", "unit"),
    "cifar10": DatasetInfo((32, 32, 3), 10, 5000, "test", False, "cifar", "unit"),
    "imagenet2012": DatasetInfo((224, 224, 3), 1000, 10000, "validation", True, "", "imagenet"),
}
SOURCES = ("auto", "idx", "cifar", "folder", "tfds", "synthetic")


class BatchSource(Protocol):
    """One split as the training loop reads it.

    `resident`: (images, labels) arrays to place on the device once, which the train
    batches index (in-memory sources), or None (streaming sources: batches are arrays).
    """

    resident: tuple[np.ndarray, np.ndarray] | None
    eval_spec: tuple[tuple[int, ...], Any]  # image shape and dtype of the eval batches

    def __len__(self) -> int: ...

    def train_batches(self, *, seed: int, epoch: int, batch_size: int,
                      start: int = 0) -> Iterator[Any]:
        """Batches start, start + 1, ... of `epoch` (full batches only), a function of
        (seed, epoch) so a resumed run replays them."""

    def eval_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(images, labels) of the whole split in order, this process's shard, the last
        batch possibly short."""


class Data(NamedTuple):
    train: BatchSource
    val: BatchSource
    test: BatchSource
    image_shape: tuple[int, int, int]
    num_classes: int
    normalization: str
    origin: str  # where the data came from, for logs and results.json


class ArraySource:
    """An in-memory split, resident on the device; train batches are row indices."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, shard: tuple[int, int] = (0, 1)):
        self.images, self.labels, self.shard = images, np.asarray(labels, np.int32), shard
        self.resident = (self.images, self.labels)
        self.eval_spec = (images.shape[1:], images.dtype)

    def __len__(self) -> int:
        return len(self.labels)

    def train_batches(self, *, seed, epoch, batch_size, start=0):
        order = input_pipeline.epoch_permutation(seed, epoch, len(self)).astype(np.int32)
        for b in range(start, len(self) // batch_size):
            yield order[b * batch_size:(b + 1) * batch_size]

    def eval_batches(self, batch_size):
        index, count = self.shard
        for lo in range(index * batch_size, len(self), batch_size * count):
            yield self.images[lo:lo + batch_size], self.labels[lo:lo + batch_size]


class StreamSource:
    """A split read record by record through a grain pipeline (reader threads, worker
    processes if asked for).

    The pipeline is a pure function of (seed, epoch, index): resuming slices the epoch's
    batches at the checkpointed step, so the run's step is the whole iterator state. Each
    process reads only its shard of the records (`shard` = (process index, count)) and
    yields batches of batch_size / count examples.
    """

    resident = None

    def __init__(self, records, *, train_map, eval_map, threads: int = 0, processes: int = 0,
                 shard: tuple[int, int] = (0, 1), eval_spec=((), np.uint8)):
        """records: random access, each {"image", "label"}; train_map(example, rng) and
        eval_map(example) turn a record into a fixed-shape image (eval_spec: its shape and
        dtype) and its label; threads, processes: see `preprocessing.grain_iterator`."""
        self.eval_spec = eval_spec
        self.records, self.threads, self.processes = records, threads, processes
        self.shard = shard
        self.train_map, self.eval_map = train_map, eval_map

    def __len__(self) -> int:
        return len(self.records)

    def _run(self, ds):
        iterator = preprocessing.grain_iterator(ds, threads=self.threads,
                                                processes=self.processes)
        try:
            for batch in iterator:
                yield np.array(batch["image"]), np.array(batch["label"], np.int32)
        except preprocessing.DecodeError as e:
            raise DataError(f"Unreadable image in the dataset: {e}") from e
        finally:
            if hasattr(iterator, "close"):
                iterator.close()

    def train_batches(self, *, seed, epoch, batch_size, start=0):
        grain = preprocessing.import_grain()

        index, count = self.shard
        epoch_seed = int(np.random.default_rng([seed, epoch]).integers(2**31))
        ds = (grain.MapDataset.source(self.records)[index::count].shuffle(seed=epoch_seed)
              .random_map(self.train_map, seed=epoch_seed)
              .batch(batch_size // count, drop_remainder=True))
        # Every process must run the same number of steps.
        steps = (len(self) // count) // (batch_size // count)
        return self._run(ds[start:steps])

    def eval_batches(self, batch_size):
        grain = preprocessing.import_grain()

        index, count = self.shard
        ds = (grain.MapDataset.source(self.records)[index::count]
              .map(self.eval_map).batch(batch_size))
        return self._run(ds)


class SyntheticRecords:
    """Random uint8 images of varied sizes and labels: a stand-in for a streaming dataset."""

    def __init__(self, n: int, num_classes: int, seed: int, size: int):
        self.n, self.num_classes, self.seed, self.size = n, num_classes, seed, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, index])
        height, width = rng.integers(self.size * 3 // 4, self.size * 3 // 2 + 1, 2)
        return {"image": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
                "label": int(rng.integers(self.num_classes))}


class _Sliced:
    """records[lo:hi] of a random-access source, without copying it."""

    def __init__(self, records, lo: int, hi: int):
        self.records, self.lo, self.hi = records, lo, hi

    def __len__(self) -> int:
        return self.hi - self.lo

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.records[self.lo + index]


def create_data(dataset: str, *, source: str = "auto", data_dir: str = "",
                download: bool = False, tfds_data_dir: str = "", val_size: int = 0,
                threads: int = 0, processes: int = 0, cache_dir: str = "",
                image_size: int = 0, seed: int = 0,
                synthetic_size: int = 512, shard: tuple[int, int] = (0, 1)) -> Data:
    """The train / val / test sources of `dataset`, checked before any training.

    Args:
      dataset: a key of DATASETS.
      source: "auto" (data_dir by its contents, then the system directories, then prepared
        tfds data), or one of "idx", "cifar", "folder", "tfds", "synthetic".
      data_dir: a local copy: IDX files, CIFAR-10 batches or an image-folder tree.
      download: let tfds download (needs network); off, nothing is written anywhere.
      val_size: validation examples from the end of train; 0: the dataset's standard size.
      threads, processes: grain reader threads (0: one per core) and worker processes
        for image folders and streaming datasets (`preprocessing.grain_iterator`).
      image_size: crop size of streaming datasets; 0: the dataset's standard size.
      shard: (process index, process count); each process reads only its shard.

    Raises:
      DataError naming the file and the problem: no copy found, corrupt files, a label
      outside [0, classes), a class with no examples in train or test, train and test
      images of different shapes, a bad folder tree.
    """
    if dataset not in DATASETS:
        raise ValueError(f"Unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}.")
    if source not in SOURCES:
        raise ValueError(f"Unknown data source {source!r}; choose one of {SOURCES}.")
    info = DATASETS[dataset]
    if source == "synthetic":  # synthetic data draws its validation split apart
        val_size = val_size or (128 if not info.streaming else max(synthetic_size // 4, 1))
    else:
        val_size = val_size or info.val_size
    if info.streaming:
        size = image_size or info.image_shape[0]
        records, classes, origin = _stream_records(dataset, info, source, data_dir, download,
                                                   tfds_data_dir, seed, synthetic_size, size,
                                                   val_size)
        train, val = (records["train"], records["val"]) if "val" in records else (
            _split_records(records["train"], val_size))
        make = lambda r: StreamSource(r, train_map=preprocessing.InceptionTrain(size),
                                      eval_map=preprocessing.CenterCropEval(size),
                                      threads=threads, processes=processes, shard=shard,
                                      eval_spec=((size, size, 3), np.uint8))
        return Data(make(train), make(val), make(records["test"]), (size, size, 3), classes,
                    info.normalization, origin)
    raw, where, classes, origin = _load_arrays(dataset, info, source, data_dir, download,
                                               tfds_data_dir, seed, threads, cache_dir,
                                               val_size)
    images = {}
    for split, (x, y) in raw.items():
        images[split] = x[..., None] if x.ndim == 3 else x
        _check_labels(y, classes, where[split][1])
        if origin != "synthetic" and split in ("train", "test"):
            _check_classes(y, classes, split, where[split][1])
    _check_shapes(images, info, {s: w[0] for s, w in where.items()})
    if "val" not in raw:  # the paper's split: the last val_size training examples
        n = len(raw["train"][1])
        if not 1 <= val_size < n:
            raise _val_size_error(f"data.val_size={val_size} must be in [1, {n}) for the "
                                  f"{n} training examples of {dataset}.")
        for key, part in (("val", slice(n - val_size, n)), ("train", slice(0, n - val_size))):
            images[key], raw[key] = images["train"][part], (None, raw["train"][1][part])
    make = lambda s: ArraySource(images[s], raw[s][1], shard)
    logging.info("Loaded %s from %s: %d train, %d val, %d test.", dataset, origin,
                 len(raw["train"][1]), len(raw["val"][1]), len(raw["test"][1]))
    return Data(make("train"), make("val"), make("test"), tuple(images["train"].shape[1:]),
                classes, info.normalization, origin)


def _load_arrays(dataset, info, source, data_dir, download, tfds_data_dir, seed, threads,
                 cache_dir, val_size):
    """(raw splits, (images, labels) file of each split, number of classes, origin)."""
    same = lambda raw, text: {s: (text.format(s), text.format(s)) for s in raw}
    if source == "synthetic":
        raw = input_pipeline.synthetic_arrays(info.image_shape, info.num_classes, seed=seed,
                                              num_val=val_size)
        return raw, same(raw, "synthetic data"), info.num_classes, "synthetic"
    if data_dir:
        kind = _local_kind(data_dir, info, source)
        if kind == "folder":
            raw, classes = folder.load_arrays(data_dir, info.image_shape, threads=threads,
                                              cache_dir=cache_dir)
            return raw, same(raw, f"{data_dir}/{{}}"), len(classes), f"folder:{data_dir}"
        if kind == "idx":
            where = input_pipeline.idx_files(data_dir)
            return input_pipeline.load_idx_dir(data_dir), where, info.num_classes, f"idx:{data_dir}"
        raw = input_pipeline.load_cifar_dir(data_dir)
        return raw, same(raw, data_dir), info.num_classes, f"cifar:{data_dir}"
    if source in ("auto", "idx"):
        for d in input_pipeline.SYSTEM_DIRS.get(dataset, ()):
            if input_pipeline.has_idx_files(d):
                return (input_pipeline.load_idx_dir(d), input_pipeline.idx_files(d),
                        info.num_classes, f"idx:{d}")
    tried = ""
    if source in ("auto", "tfds"):
        try:
            raw = input_pipeline.load_tfds(dataset, data_dir=tfds_data_dir or None,
                                           download=download, splits=("train", info.test_split))
            return raw, same(raw, f"tfds {dataset} {{}}"), info.num_classes, "tfds"
        except Exception as e:  # tfds raises many types; all mean "not available"
            tried = f" tfds said: {type(e).__name__}: {str(e)[:300]}"
    raise DataError(_no_source_message(dataset, info, download) + tried)


def _local_kind(data_dir: str, info: DatasetInfo, source: str) -> str:
    """Which reader `data_dir` needs: "folder", "idx" or "cifar"; an explicit source must fit."""
    if not os.path.isdir(data_dir):
        raise DataError(f"Data directory {data_dir!r} does not exist.")
    found = ("folder" if folder.is_folder_dataset(data_dir) else
             "idx" if input_pipeline.has_idx_files(data_dir) else
             "cifar" if input_pipeline.has_cifar_files(data_dir) else None)
    wanted = source if source in ("idx", "cifar", "folder") else None
    if wanted == "folder" or (found == "folder" and wanted is None):
        return "folder"
    kind = wanted or found or info.local
    if kind not in (info.local, "folder"):
        raise DataError(f"data.source={kind!r} does not hold this dataset; {data_dir!r} "
                        f"needs {info.local!r} files or an image-folder tree.")
    return kind


def _stream_records(dataset, info, source, data_dir, download, tfds_data_dir, seed, n, size,
                    val_size):
    if source == "synthetic":
        records = {"train": SyntheticRecords(n, info.num_classes, seed, size),
                   "val": SyntheticRecords(val_size, info.num_classes, seed + 2, size),
                   "test": SyntheticRecords(n // 2, info.num_classes, seed + 1, size)}
        return records, info.num_classes, "synthetic"
    if data_dir or source == "folder":
        records, classes = folder.scan(data_dir)
        return records, len(classes), f"folder:{data_dir}"
    if source not in ("auto", "tfds"):
        raise DataError(f"data.source={source!r} cannot hold {dataset}; use 'tfds', 'folder' "
                        f"or 'synthetic'.")
    import tensorflow_datasets as tfds  # noqa: PLC0415 - heavy; only this source needs it

    records = {}
    for key, split in (("train", "train"), ("test", info.test_split)):
        try:
            records[key] = tfds.data_source(
                dataset, split=split, data_dir=tfds_data_dir or None, download=download,
                builder_kwargs={"file_format": "array_record"})
        except Exception as e:  # tfds raises many types; all mean "not prepared"
            raise DataError(
                f"{dataset} split {split!r} is not prepared in tfds data_dir="
                f"{tfds_data_dir or '~/tensorflow_datasets'!r} ({type(e).__name__}: "
                f"{str(e)[:200]}). Prepare it once from the ILSVRC2012 tarballs: tfds build "
                f"{dataset} --manual_dir=DIR_WITH_TARS --file_format=array_record, or point "
                f"--config.data.dir at an image-folder tree (docs/usage.md, 'ResNets, "
                f"CIFAR-10 and ImageNet').") from e
    return records, info.num_classes, "tfds"


def _split_records(records, val_size: int):
    n = len(records)
    if not 1 <= val_size < n:
        raise _val_size_error(f"data.val_size={val_size} must be in [1, {n}) for the {n} "
                              f"training examples.")
    return _Sliced(records, 0, n - val_size), _Sliced(records, n - val_size, n)


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise DataError(f"{where}: label {int(labels[bad[0]])} at index {bad[0]} is outside "
                        f"[0, {num_classes}) ({bad.size} bad labels in all).")


def _check_classes(labels: np.ndarray, num_classes: int, split: str, where: str) -> None:
    """Every class has examples in the split (a one-class copy trains a model that cannot
    be wrong; a class missing from test is never measured)."""
    found = np.unique(labels)
    if num_classes < 2 or len(found) < num_classes:
        missing = sorted(set(range(num_classes)) - {int(c) for c in found})
        raise DataError(f"{where}: the {split} split has examples of classes "
                        f"{[int(c) for c in found]} only; classes {missing} have none (a "
                        f"classifier needs all {num_classes} classes in train and test, and "
                        f"at least two).")


def _check_shapes(images: dict, info: DatasetInfo, where: dict) -> None:
    shapes = {s: tuple(x.shape[1:]) for s, x in images.items()}
    for split, shape in shapes.items():
        if shape != info.image_shape:
            raise DataError(f"{where[split]}: images are {'x'.join(map(str, shape))} but this "
                            f"dataset's are {'x'.join(map(str, info.image_shape))}.")


def _no_source_message(name: str, info: DatasetInfo, download: bool) -> str:
    if info.local == "cifar":
        local = ("point --config.data.dir at the extracted cifar-10-binary.tar.gz or "
                 "cifar-10-python.tar.gz, or at an image-folder tree (train/<class>/*.jpg, "
                 "test/<class>/*.jpg)")
    else:
        local = ("point --config.data.dir at a directory with the four IDX files ("
                 + ", ".join(s for st in input_pipeline.IDX_STEMS.values() for s in st)
                 + ", raw or .gz), or at an image-folder tree")
    options = [local]
    if name == "fashion_mnist":
        options.append("on Debian/Ubuntu: apt-get install dataset-fashion-mnist (files land in "
                       f"{input_pipeline.SYSTEM_DIRS[name][0]})")
    options.append("let tfds prepare it: pip install -e '.[tfds]' and "
                   + ("check the network (download=True was set)" if download
                      else "--config.data.download=True (needs network)"))
    return f"No copy of {name!r} found. Options:\n  - " + "\n  - ".join(options) + "\n"


def _val_size_error(message: str) -> Exception:
    """A ConfigError (imported here: config_schema reads this module's DATASETS and
    SOURCES, the one home of those choices)."""
    from rec_lra_jax.config_schema import ConfigError  # noqa: PLC0415 - see above

    return ConfigError(message)
