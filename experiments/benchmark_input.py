r"""Input-pipeline throughput: decoded and augmented images per second, per CPU core.

  python -m experiments.benchmark_input [--dir=IMAGE_FOLDER] [--size=224] [--counts=1,2]

Reads the training split of an image-folder tree (DIR/train/<class>/*.jpg, as for ImageNet
or Imagenette) with the preprocessing of streaming datasets (JPEG decode, random resized
crop to size x size, flip):
- one core, in this process, no pipeline: the cost of the preprocessing itself;
- `sources.StreamSource` (what training uses), batches of 64, with N grain reader threads
  in this process (the default), or with N grain worker processes of one thread each;
- N threads of a plain thread pool running the same preprocessing (the first release's
  hand-written design), for comparison.
Each is timed over one whole epoch, worker start-up included, in wall time and in CPU
time (this process and its worker processes, user + system): images per CPU-second is the
per-core figure, the one that says how many cores keep an accelerator fed. Without --dir it
writes --images synthetic JPEGs of ImageNet's typical size (500 x 375, quality 90, smooth
content plus grain noise) to a temporary folder.
"""

import concurrent.futures
import functools
import os
import resource
import tempfile
import time

import numpy as np
from absl import app, flags
from PIL import Image

from rec_lra_jax import folder, preprocessing, sources

FLAGS = flags.FLAGS
flags.DEFINE_string("dir", "", "An image-folder tree; empty: synthetic JPEGs.")
flags.DEFINE_integer("size", 224, "Crop size.")
flags.DEFINE_list("counts", ["1", "2"], "Thread and process counts to try.")
flags.DEFINE_integer("images", 2048, "Synthetic JPEGs to write when --dir is empty.")
flags.DEFINE_integer("limit", 4096, "Read at most this many training images.")

BATCH = 64


def write_jpegs(directory: str, n: int, classes: int = 8) -> str:
    """`n` 500x375 JPEGs with smooth structure and grain, in train/ and test/ class folders."""
    rng = np.random.default_rng(0)
    for i in range(n):
        split = "test" if (i // classes) % 16 == 0 else "train"
        path = os.path.join(directory, split, f"c{i % classes}")
        os.makedirs(path, exist_ok=True)
        low = rng.uniform(0, 255, (12, 16, 3)).astype(np.uint8)
        image = np.asarray(Image.fromarray(low).resize((500, 375), Image.BICUBIC), np.float32)
        image += rng.normal(0, 12, image.shape)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
            os.path.join(path, f"{i:05d}.jpg"), quality=90)
    return directory


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished child processes."""
    own, children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF,
                                                       resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(count_images) -> tuple[float, float]:
    """(images per wall second, images per CPU second) of count_images()."""
    wall, cpu = time.perf_counter(), _cpu_seconds()
    n = count_images()
    return n / (time.perf_counter() - wall), n / (_cpu_seconds() - cpu)


def one_core(records, size: int, n: int = 256) -> int:
    transform, rng = preprocessing.InceptionTrain(size), np.random.default_rng(0)
    for i in range(n):
        transform(records[i], rng)
    return n


def grain_epoch(records, threads: int, processes: int, size: int) -> int:
    source = sources.StreamSource(records, train_map=preprocessing.InceptionTrain(size),
                                  eval_map=preprocessing.CenterCropEval(size), threads=threads,
                                  processes=processes)
    return sum(len(labels) for _, labels in
               source.train_batches(seed=0, epoch=0, batch_size=BATCH))


def thread_pool_epoch(records, threads: int, size: int) -> int:
    transform = preprocessing.InceptionTrain(size)
    order = np.random.default_rng(0).permutation(len(records))

    def load(b):
        rng = np.random.default_rng([0, b])
        items = [transform(records[int(i)], rng) for i in order[b * BATCH:(b + 1) * BATCH]]
        return np.stack([x["image"] for x in items])

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return sum(len(batch) for batch in pool.map(load, range(len(records) // BATCH)))


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as tmp:
        root = FLAGS.dir or write_jpegs(tmp, FLAGS.images)
        records = folder.scan(root)[0]["train"]
        records = records.subset(slice(0, FLAGS.limit))
        sizes = [os.path.getsize(records.files[i]) for i in range(0, len(records), 50)]
        dims = Image.open(records.files[0]).size
        print(f"\n{len(records)} training JPEGs from {FLAGS.dir or 'a synthetic folder'} (e.g. "
              f"{dims[0]}x{dims[1]}, mean {np.mean(sizes) / 1024:.0f} KiB), random resized "
              f"crop to {FLAGS.size}x{FLAGS.size} + flip, batches of {BATCH}, "
              f"{os.cpu_count()} CPU cores\n")
        print("| pipeline | threads | processes | images / s (wall) | images / CPU-second |")
        print("| --- | --- | --- | --- | --- |")
        wall, cpu = measure(lambda: one_core(records, FLAGS.size))
        print(f"| preprocessing alone | 1 | 0 | {wall:.0f} | {cpu:.0f} |", flush=True)
        for n in (int(c) for c in FLAGS.counts):
            for name, threads, processes in (("grain StreamSource", n, 0),
                                             ("grain StreamSource", 1, n),
                                             ("thread pool (first release)", n, 0)):
                if name.startswith("grain"):
                    wall, cpu = measure(functools.partial(grain_epoch, records, threads,
                                                          processes, FLAGS.size))
                else:
                    wall, cpu = measure(functools.partial(thread_pool_epoch, records, threads,
                                                          FLAGS.size))
                print(f"| {name} | {threads} | {processes} | {wall:.0f} | {cpu:.0f} |",
                      flush=True)

if __name__ == "__main__":
    app.run(main)
