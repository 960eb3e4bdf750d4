# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # ResNet-18 on CIFAR-10 on a GPU or TPU: rec-LRA against backprop
#
# Trains CIFAR-10 ResNet-18 with the library's training loop, which shards each batch over
# every local device (a `data` mesh axis). It shows each wiring's critical path (how many
# sequential steps its targets need after the forward pass), measures the train step's
# time and memory on this hardware, and trains the best short-path rec-LRA wiring and
# backprop with the same model, data, optimizer and seed. On a 2-core CPU at width 8, 15
# epochs reach 73.9 % (rec-LRA, 5 target hops) and 80.9 % (backprop, 17): BENCHMARKS.md.
# Needs no TensorFlow: CIFAR-10's binary batches are fetched directly.

# %% tags=["parameters"]
import os

SMOKE = os.environ.get("REC_LRA_SMOKE", "0") == "1"  # width 4, synthetic data, a few steps
EPOCHS = 5  # BENCHMARKS.md's comparisons run 15
WIDTH = 64  # 64: the full ResNet-18; 8: the CPU-sized net of BENCHMARKS.md
RUNS = os.environ.get("REC_LRA_WORKDIRS", "workdirs")  # where the runs go (resumable)
WORKDIR = os.path.join(RUNS, "notebook_resnet")
# Outside a clone of the repository (Colab): its git URL, to clone and install it.
REPOSITORY = os.environ.get("REC_LRA_REPOSITORY", "")

# %% [markdown]
# ## Set-up: the library from the repository, the device

# %%
import subprocess
import sys


def repository_root():
    """The clone this notebook runs in (its folder or the one above), or a fresh clone."""
    for folder in (os.getcwd(), os.path.dirname(os.getcwd())):
        if os.path.exists(os.path.join(folder, "rec_lra_jax", "__init__.py")):
            return folder
    if not REPOSITORY:
        raise RuntimeError("Not inside a clone of rec_lra_jax: set REPOSITORY (the "
                           "parameter cell) to the repository's git URL to clone it.")
    folder = os.path.abspath("rec_lra_jax")
    if not os.path.exists(folder):
        subprocess.run(["git", "clone", "--depth=1", REPOSITORY, folder], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", folder], check=True)
    return folder


ROOT = repository_root()
os.chdir(ROOT)
sys.path.insert(0, ROOT)

import jax

print(f"jax {jax.__version__}: {jax.device_count()} {jax.devices()[0].platform.upper()} "
      f"device(s), {jax.devices()[0].device_kind}")

# %% [markdown]
# ## Data: CIFAR-10's binary batches (smoke mode: synthetic images)

# %%
import tarfile
import urllib.request

from configs import cifar10_resnet18

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"


def cifar10_dir():
    folder = os.path.expanduser("~/data/cifar10")
    batches = os.path.join(folder, "cifar-10-batches-bin")
    if not os.path.exists(os.path.join(batches, "test_batch.bin")):
        os.makedirs(folder, exist_ok=True)
        archive = os.path.join(folder, "cifar-10-binary.tar.gz")
        if not os.path.exists(archive):
            urllib.request.urlretrieve(URL, archive)
        with tarfile.open(archive) as tar:
            tar.extractall(folder)
    return batches


def make_config(rule, **lra):
    config = cifar10_resnet18.get_config("smoke" if SMOKE else None)
    config.rule = rule
    if not SMOKE:
        config.model.width = WIDTH
        config.num_epochs = EPOCHS
        config.data.dir = cifar10_dir()
        config.log_every_steps = 100
    for key, value in lra.items():
        config.lra[key] = value
    return config


print("data:", "synthetic (smoke mode)" if SMOKE else make_config("bp").data.dir)

# %% [markdown]
# ## The critical path of each wiring
#
# Target hops: the sequential sweep steps from the output error to the last target. All
# units with the same count can be updated side by side; backprop's count is the number of
# weight layers below the output.

# %%
from rec_lra_jax import builder

PAPER = dict(module="block", local_loss="none", skip_source="dense", rescale=False,
             feedback_scale=1.0, beta=0.1, beta_schedule="constant", weight_mirror=0.0)
wirings = [("rec_lra", {}), ("rec_lra", PAPER), ("dfa", {}), ("kp", {}), ("bp", {})]
print("| rule | wiring | target hops |\n| --- | --- | --- |")
for rule, lra in wirings:
    config = make_config(rule, **lra)
    print(f"| {rule} | {builder.describe_wiring(config)} | {builder.target_hops(config)} |")

# %% [markdown]
# ## Step time and memory on this hardware
#
# Each rule's jitted train step exactly as the loop builds it, timed on random data after
# compilation; memory is XLA's account of the compiled step (and the device's peak on a GPU).

# %%
import time

import jax.numpy as jnp
import numpy as np

from rec_lra_jax import sources

STEPS = 1 if SMOKE else 20
info = sources.DATASETS["cifar10"]
rows = []
for rule in ("bp", "rec_lra") if SMOKE else ("bp", "rec_lra", "kp"):
    config = make_config(rule)
    rng = np.random.default_rng(0)
    n = STEPS * config.batch_size
    data = (jnp.asarray(rng.integers(0, 256, (n, *info.image_shape), dtype=np.uint8)),
            jnp.asarray(rng.integers(0, 10, n).astype(np.int32)))
    batches = jnp.arange(n, dtype=jnp.int32).reshape(STEPS, config.batch_size)
    setup = builder.create_setup(config, input_shape=info.image_shape, num_classes=10,
                                 total_steps=10**6, normalization=info.normalization,
                                 donate=False)
    step = setup.train_fn.lower(setup.state, data, batches).compile()  # compiled once
    memory = step.memory_analysis()
    jax.block_until_ready(step(setup.state, data, batches))  # warm up
    start = time.perf_counter()
    jax.block_until_ready(step(setup.state, data, batches))
    ms = (time.perf_counter() - start) / STEPS * 1e3
    mib = (memory.temp_size_in_bytes + memory.argument_size_in_bytes) / 2**20
    rows.append((rule, ms, config.batch_size / ms * 1e3, mib))
print(f"{jax.device_count()} x {jax.devices()[0].device_kind}, batch {config.batch_size}")
print("| rule | ms / step | images / s | XLA temp + args (MiB) | time / bp | memory / bp |")
print("| --- | --- | --- | --- | --- | --- |")
for rule, ms, images, mib in rows:
    print(f"| {rule} | {ms:.1f} | {images:.0f} | {mib:.0f} | {ms / rows[0][1]:.2f} | "
          f"{mib / rows[0][3]:.2f} |")
stats = jax.devices()[0].memory_stats() or {}
if "peak_bytes_in_use" in stats:
    print(f"device peak memory: {stats['peak_bytes_in_use'] / 2**30:.2f} GiB")

# %% [markdown]
# ## Train rec-LRA (the short-path wiring) and backprop
#
# The same loop as `python -m experiments.cifar10`: progress lines, checkpoints in the
# workdir (re-running resumes), the batch sharded over every local device.

# %%
from absl import logging

from rec_lra_jax import metrics, train

logging.set_verbosity(logging.WARNING if SMOKE else logging.INFO)
results = [train.train_and_evaluate(make_config(rule), os.path.join(WORKDIR, rule))
           for rule in ("rec_lra", "bp")]
print(metrics.results_table(results))
