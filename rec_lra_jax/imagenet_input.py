"""Streaming ImageNet (tfds "imagenet2012") input with the standard preprocessing.

Train: random resized crop (scale 0.08-1, aspect 3/4-4/3) to `size` and a horizontal flip;
eval: resize the shorter side to size * 256 / 224, then a center crop. Pixels are scaled to
[0, 1] and standardised with the ImageNet channel mean and std. Records are read by random
access (`tfds.data_source`, array_record files, no TensorFlow at run time) and decoded and
preprocessed by a thread pool, a few batches ahead of the train step.

Preparing the data once (needs the tfds extra, i.e. TensorFlow, for the build only):

  tfds build imagenet2012 --manual_dir=/path/to/tarballs --data_dir=~/tensorflow_datasets \
      --file_format=array_record

where /path/to/tarballs holds ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar.
"""

import concurrent.futures
from collections.abc import Iterator

import numpy as np
from PIL import Image

from rec_lra_jax.input_pipeline import DataError

MEAN = np.asarray([0.485, 0.456, 0.406], np.float32)
STD = np.asarray([0.229, 0.224, 0.225], np.float32)


def open_split(split: str, *, data_dir: str | None, name: str = "imagenet2012"):
    """The random-access source of one split, or DataError with preparation steps."""
    import tensorflow_datasets as tfds  # noqa: PLC0415 - heavy, only for this dataset

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False,
                                builder_kwargs={"file_format": "array_record"})
    except Exception as e:  # tfds raises many types; all mean "not prepared"
        raise DataError(
            f"{name} split {split!r} is not prepared in data_dir={data_dir!r} "
            f"({type(e).__name__}: {str(e)[:200]}). Prepare it once from the ILSVRC2012 "
            f"tarballs: tfds build {name} --manual_dir=DIR_WITH_TARS "
            f"--data_dir={data_dir or '~/tensorflow_datasets'} --file_format=array_record "
            f"(see README.md, 'ImageNet')."
        ) from e


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def random_resized_crop(rng: np.random.Generator, image: np.ndarray, size: int,
                        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
    """Inception-style crop: random area and aspect, resized to size x size, random flip."""
    image = _rgb(image)
    height, width = image.shape[:2]
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        w = int(round(np.sqrt(target * aspect)))
        h = int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            y, x = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
            break
    else:  # fall back to the whole image's central square
        h = w = min(height, width)
        y, x = (height - h) // 2, (width - w) // 2
    crop = _resize(image[y:y + h, x:x + w], size, size)
    return crop[:, ::-1] if rng.random() < 0.5 else crop


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to size * 256 / 224, then take the central size x size."""
    image = _rgb(image)
    height, width = image.shape[:2]
    short = int(round(size * 256 / 224))
    scale = short / min(height, width)
    h, w = max(size, int(round(height * scale))), max(size, int(round(width * scale)))
    image = _resize(image, h, w)
    y, x = (h - size) // 2, (w - size) // 2
    return image[y:y + size, x:x + size]


def normalize(images: np.ndarray) -> np.ndarray:
    return (images.astype(np.float32) / 255.0 - MEAN) / STD


def batches(source, *, batch_size: int, size: int, train: bool, seed: int, epoch: int,
            skip: int = 0, workers: int = 8, prefetch: int = 2,
            limit: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Preprocessed (images, labels) batches of one epoch.

    Train: a shuffled order that is a function of (seed, epoch), full batches only, and
    `skip` batches skipped (to resume mid-epoch). Eval: in order, the last batch partial.
    `limit` caps the number of examples read (smoke runs).
    """
    n = min(len(source), limit) if limit else len(source)
    order = np.random.default_rng([seed, epoch]).permutation(n) if train else np.arange(n)
    count = n // batch_size if train else -(-n // batch_size)

    def load(b):
        idx = order[b * batch_size:(b + 1) * batch_size]
        rng = np.random.default_rng([seed, epoch, b])
        images, labels = [], []
        for i in idx:
            example = source[int(i)]
            image = example["image"]
            images.append(random_resized_crop(rng, image, size) if train
                          else center_crop(image, size))
            labels.append(int(example["label"]))
        return normalize(np.stack(images)), np.asarray(labels, np.int32)

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending = [pool.submit(load, b) for b in range(skip, min(skip + prefetch, count))]
        for b in range(skip, count):
            batch = pending.pop(0).result()
            if b + prefetch < count:
                pending.append(pool.submit(load, b + prefetch))
            yield batch
