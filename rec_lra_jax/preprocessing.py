"""Host-side image preprocessing with numpy and Pillow, and the grain iterator that runs it.

Decoding, resizing to a fixed shape (the small datasets), and the standard ImageNet
preprocessing: random resized crop (scale 0.08-1, aspect 3/4-4/3) plus a horizontal flip
for training; resize the shorter side to size * 256 / 224, then a center crop, for eval.
Outputs are uint8 HWC; scaling to floats happens on the device (`steps.normalize`).
"""

import io
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DecodeError(ValueError):
    """An image file or record that cannot be decoded."""


def decode(data: bytes | np.ndarray, channels: int, name: str = "image") -> np.ndarray:
    """Encoded bytes (JPEG, PNG, ...) or an array to uint8 (H, W, channels)."""
    if isinstance(data, bytes | bytearray):
        try:
            with Image.open(io.BytesIO(data)) as image:
                image = image.convert("L" if channels == 1 else "RGB")
                array = np.asarray(image, np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise DecodeError(f"cannot decode {name}: {type(e).__name__}: {e}") from e
    else:
        array = np.asarray(data, np.uint8)
    return to_channels(array, channels)


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """(H, W[, C]) uint8 to (H, W, channels): grey to RGB by repetition, RGB to grey by luma."""
    image = np.asarray(image, np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == channels:
        return image
    if channels == 3 and image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    if channels == 1:
        return np.asarray(Image.fromarray(image[..., :3]).convert("L"), np.uint8)[..., None]
    raise DecodeError(f"cannot convert an image with {image.shape[-1]} channels to {channels}")


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a uint8 (H, W, C) image; a no-op at the same size."""
    if image.shape[:2] == (height, width):
        return image
    channels = image.shape[-1]
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    out = np.asarray(pil.resize((width, height), Image.BILINEAR), np.uint8)
    return out.reshape(height, width, channels)


def random_resized_crop(rng: np.random.Generator, image: np.ndarray, size: int,
                        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
    """Inception-style crop: random area and aspect, resized to size x size, random flip."""
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
    crop = resize(image[y:y + h, x:x + w], size, size)
    return crop[:, ::-1] if rng.random() < 0.5 else crop


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to size * 256 / 224, then take the central size x size."""
    height, width = image.shape[:2]
    short = int(round(size * 256 / 224))
    scale = short / min(height, width)
    h, w = max(size, int(round(height * scale))), max(size, int(round(width * scale)))
    image = resize(image, h, w)
    y, x = (h - size) // 2, (w - size) // 2
    return image[y:y + size, x:x + size]


class FixedSize:
    """Decode and resize every image to one shape (the small datasets: no augmentation here)."""

    def __init__(self, shape: tuple[int, int, int]):
        self.shape = tuple(shape)

    def __call__(self, example: dict) -> dict:
        image = decode(example["image"], self.shape[-1], example.get("name", "image"))
        return {"image": resize(image, *self.shape[:2]), "label": example["label"]}


class InceptionTrain:
    """Decode, random resized crop to size x size, random flip (grain RandomMap)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, example: dict, rng: np.random.Generator) -> dict:
        image = decode(example["image"], 3, example.get("name", "image"))
        return {"image": random_resized_crop(rng, image, self.size), "label": example["label"]}


class CenterCropEval:
    """Decode, resize the shorter side, center crop to size x size (grain Map)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, example: dict) -> dict:
        image = decode(example["image"], 3, example.get("name", "image"))
        return {"image": center_crop(image, self.size), "label": example["label"]}


def grain_iterator(ds, *, threads: int = 0, processes: int = 0):
    """An iterator over the grain MapDataset `ds`, read by `threads` threads (0: one per
    core) in this process, or in each of `processes` worker processes.

    Pillow releases the GIL while it decodes and resizes, so threads scale with cores;
    processes help only when the Python between them is the bottleneck (measured in
    docs/experiments/history.md, "Input pipeline").
    """
    grain = import_grain()
    threads = threads or os.cpu_count() or 1
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                              prefetch_buffer_size=threads))
    if processes:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=processes))
    return iter(it)


def import_grain():
    """The grain module, usable outside an absl app (tests, notebooks).

    grain's worker processes read absl flags; when no absl app has parsed them (a library
    call), they are marked parsed so grain falls back to its defaults.
    """
    import grain  # noqa: PLC0415 - only folder and streaming sources need it
    from absl import flags  # noqa: PLC0415

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return grain
