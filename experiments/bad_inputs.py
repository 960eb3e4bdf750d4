r"""Every known bad input, run through the real command line: exit code, time, message.

  python -m experiments.bad_inputs            # prints a Markdown table; exit 1 if any case
                                              # passed, gave no message or lost files

Each case runs `python -m experiments.<entry> --config=... --workdir=W <flags>` in a fresh
process (imports included, as a user would). W is either a copy of a finished smoke run
("finished": nothing in it may change) or an empty directory ("fresh": nothing may be
written). The same cases are the test table in tests/test_bad_inputs.py.
"""

import dataclasses
import gzip
import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MLP = "configs/fmnist_mlp.py:smoke"
RESNET = "configs/fmnist_resnet18.py:smoke"


def write_idx(directory: str, *, bad_label: int | None = None, test_size: int = 28) -> str:
    """Four small IDX files; optionally label 7 of train set to `bad_label`, or test images
    of another size."""
    rng = np.random.default_rng(0)
    os.makedirs(directory, exist_ok=True)
    for split, n, size in (("train", 60, 28), ("t10k", 20, test_size)):
        images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        if bad_label is not None and split == "train":
            labels[7] = bad_label
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
                f">{array.ndim}I", *array.shape)
            with gzip.open(os.path.join(directory, f"{split}-{kind}-ubyte.gz"), "wb") as f:
                f.write(header + array.tobytes())
    return directory


def write_folder(directory: str, *, classes=("cat", "dog", "owl"), per_class: int = 4,
                 corrupt: bool = False, empty: str | None = None,
                 test_classes=None) -> str:
    """A small image-folder tree of 32x32 JPEG and PNG files."""
    from PIL import Image  # noqa: PLC0415

    rng = np.random.default_rng(0)
    for split, names in (("train", classes), ("test", test_classes or classes)):
        for name in names:
            folder = os.path.join(directory, split, name)
            os.makedirs(folder, exist_ok=True)
            if name == empty and split == "train":
                continue
            for i in range(per_class):
                image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
                image.save(os.path.join(folder, f"{i:03d}.{'png' if i % 2 else 'jpg'}"))
    if corrupt:
        with open(os.path.join(directory, "train", classes[1], "002.jpg"), "wb") as f:
            f.write(b"\xff\xd8 this is not a JPEG")
    return directory


@dataclasses.dataclass
class Case:
    name: str
    flags: list
    message: str  # regex the error message must match
    config: str = MLP
    workdir: str = "finished"  # "finished": a finished run's copy; "fresh": empty
    module: str = "experiments.fashion_mnist"
    prepare: object = None  # prepare(tmp) -> extra flags


CASES = [
    Case("mistyped config key", ["--config.optim.lrr=0.1"], r"unknown config key.*optim\.lrr"),
    Case("MLP option on a ResNet", ["--config.lra.module_size=3"],
         r"lra\.module_size has no effect on ResNets", config=RESNET),
    Case("model family switched", ["--config.model.name=resnet"],
         r"model\.hidden has no effect on ResNets"),
    Case("negative learning rate", ["--config.optim.lr=-1"],
         r"optim\.lr=-1\.0 is out of range: must be a finite number > 0"),
    Case("NaN learning rate", ["--config.optim.lr=nan"], r"optim\.lr=nan is out of range"),
    Case("negative beta", ["--config.lra.beta=-0.1"], r"lra\.beta=-0\.1 is out of range"),
    Case("final beta without a beta schedule", ["--config.lra.beta_final=0.02"],
         r"lra\.beta_final=0\.02 has no effect.*lra\.beta_schedule is 'linear' or 'cosine'"),
    Case("batch size 0", ["--config.batch_size=0"],
         r"batch_size=0 is out of range: must be an integer >= 1"),
    Case("negative epochs", ["--config.num_epochs=-1"], r"num_epochs=-1 is out of range"),
    Case("eval batch size 0", ["--config.eval_batch_size=0"], r"eval_batch_size=0 is out"),
    Case("checkpoint interval 0", ["--config.checkpoint_every_epochs=0"],
         r"checkpoint_every_epochs=0\.0 is out of range: must be a finite number > 0"),
    Case("steps per call 0", ["--config.steps_per_call=0"], r"steps_per_call=0 is out"),
    Case("negative logging interval", ["--config.log_every_steps=-1"],
         r"log_every_steps=-1 is out"),
    Case("negative validation size", ["--config.data.val_size=-5"], r"data\.val_size=-5 is out"),
    Case("negative seed", ["--config.seed=-1"], r"seed=-1 is out of range"),
    Case("unknown rule", ["--config.rule=hebb"], r"rule='hebb' is unknown for MLPs"),
    Case("rec-LRA option under backprop", ["--config.rule=bp", "--config.lra.beta=0.5"],
         r"lra\.beta=0\.5 has no effect: it is read only by rules rec_lra, lra_e"),
    Case("data.dir with synthetic data", ["--config.data.dir=/some/dir"],
         r"data\.dir='/some/dir' has no effect: it is read only by data sources"),
    Case("head chain without head_last",
         ["--config.lra.skip_source=head", "--config.lra.head_last=False"],
         r"lra\.skip_source='head' needs lra\.head_last=True", config=RESNET),
    Case("workdir of another config", ["--config.optim.lr=0.01"],
         r"different config.*optim\.lr: 0\.001 -> 0\.01.*--allow_config_change"),
    Case("other widths, forced", ["--config.model.hidden=(64,64,64)", "--allow_config_change"],
         r"made for another model.*params/layer_00/kernel: checkpoint \(784, 32\), config "
         r"\(784, 64\)"),
    Case("label outside the classes", ["--config.data.source=idx"],
         r"train-labels-idx1-ubyte\.gz: label 255 at index 7 is outside \[0, 10\)",
         config="configs/fmnist_mlp.py", workdir="fresh",
         prepare=lambda tmp: [f"--config.data.dir={write_idx(tmp + '/idx', bad_label=255)}"]),
    Case("test images of another shape", [],
         r"t10k-images-idx3-ubyte\.gz: images are 32x32x1 but this dataset's are 28x28x1",
         config="configs/fmnist_mlp.py", workdir="fresh",
         prepare=lambda tmp: [f"--config.data.dir={write_idx(tmp + '/idx', test_size=32)}"]),
    Case("validation split larger than train", ["--config.data.val_size=100"],
         r"data\.val_size=100 must be in \[1, 60\) for the 60 training examples",
         config="configs/fmnist_mlp.py", workdir="fresh",
         prepare=lambda tmp: [f"--config.data.dir={write_idx(tmp + '/idx')}"]),
    Case("missing data directory", ["--config.data.dir=/nonexistent/fmnist"],
         r"Data directory '/nonexistent/fmnist' does not exist",
         config="configs/fmnist_mlp.py", workdir="fresh"),
    Case("no copy of MNIST, offline", [], r"No copy of 'mnist' found", workdir="fresh",
         config="configs/mnist_mlp.py", module="experiments.mnist"),
    Case("no copy of CIFAR-10, offline", [], r"No copy of 'cifar10' found", workdir="fresh",
         config="configs/cifar10_resnet18.py", module="experiments.cifar10"),
    Case("corrupt image in a folder", [], r"cannot decode .*train/dog/002\.jpg",
         config="configs/cifar10_resnet18.py", module="experiments.cifar10", workdir="fresh",
         prepare=lambda tmp: [f"--config.data.dir={write_folder(tmp + '/f', corrupt=True)}",
                              f"--config.data.cache_dir={tmp}/cache"]),
    Case("empty class folder", [], r"Class folder .*train/owl holds no JPEG or PNG images",
         config="configs/cifar10_resnet18.py", module="experiments.cifar10", workdir="fresh",
         prepare=lambda tmp: [f"--config.data.dir={write_folder(tmp + '/f', empty='owl')}"]),
    Case("class folders differ", [], r"only in train: \['owl'\], only in test: \['emu'\]",
         config="configs/cifar10_resnet18.py", module="experiments.cifar10", workdir="fresh",
         prepare=lambda tmp: [f"--config.data.dir="
                              f"{write_folder(tmp + '/f', test_classes=('cat', 'dog', 'emu'))}"]),
]


def snapshot(path: str) -> dict:
    """{relative path: sha256} of every file under `path` ({} if it does not exist)."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return out


def finished_run(directory: str) -> str:
    """A finished smoke run (the workdir that "finished" cases run against)."""
    proc = subprocess.run([sys.executable, "-m", "experiments.fashion_mnist",
                           f"--config={MLP}", f"--workdir={directory}"], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env=_env(directory))
    if proc.returncode:
        raise RuntimeError(f"the reference run failed:\n{proc.stderr[-2000:]}")
    return directory


def _env(tmp: str) -> dict:
    env = dict(os.environ, PYTHONPATH=REPO, HOME=os.path.join(tmp, "home"))
    env.pop("XLA_FLAGS", None)
    return env


def run_case(case: Case, finished: str, tmp: str) -> dict:
    """Runs one case; returns its exit code, seconds, message and whether files survived."""
    workdir = os.path.join(tmp, "workdir")
    if case.workdir == "finished":
        shutil.copytree(finished, workdir)
    before = snapshot(workdir)
    extra = case.prepare(tmp) if case.prepare else []
    cmd = [sys.executable, "-m", case.module, f"--config={case.config}",
           f"--workdir={workdir}", *case.flags, *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=_env(tmp))
    seconds = time.perf_counter() - start
    message = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    error = proc.stderr[proc.stderr.rfind("error: "):] if "error: " in proc.stderr else ""
    return {"exit": proc.returncode, "seconds": seconds, "message": message,
            "error": error, "matches": bool(re.search(case.message, error, re.S)),
            "traceback": "Traceback" in proc.stderr,
            "unchanged": snapshot(workdir) == before,
            "tfds_written": os.path.exists(os.path.join(tmp, "home", "tensorflow_datasets"))}


def main(argv):
    del argv
    failures = 0
    with tempfile.TemporaryDirectory() as root:
        finished = finished_run(os.path.join(root, "finished"))
        print("| bad input | exit code | seconds | files unchanged | error message |")
        print("| --- | --- | --- | --- | --- |")
        for i, case in enumerate(CASES):
            tmp = os.path.join(root, f"case{i}")
            os.makedirs(tmp)
            r = run_case(case, finished, tmp)
            ok = (r["exit"] == 1 and r["matches"] and not r["traceback"] and r["unchanged"]
                  and not r["tfds_written"])
            failures += not ok
            lines = r["error"][len("error: "):].splitlines() or [r["message"]]
            first = lines[0] + (" " + lines[1].strip(" -") if lines[0].endswith(":") else "")
            print(f"| {case.name} | {r['exit']} | {r['seconds']:.1f} | "
                  f"{'yes' if r['unchanged'] else 'NO'} | {first[:160]}"
                  f"{'' if ok else ' **(FAILED)**'} |", flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    app.run(main)
