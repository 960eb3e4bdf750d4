r"""Every known bad input and fault, run through the real command line: exit code, time,
message.

  python -m experiments.bad_inputs            # prints a Markdown table; exit 1 if any case
                                              # misbehaved

Each case runs `python -m experiments.<entry> --config=... --workdir=W <flags>` in a fresh
process (imports included, as a user would). W is either a copy of a finished smoke run
("finished": nothing in it may change) or an empty directory ("fresh": nothing may be
written). A bad input or a fault must end with exit code 1 and one line naming the cause
and the fix, no traceback; a damaged record the run can repair (a truncated json file, a
partial metrics line, a cut-short image cache) is repaired with a warning and the run goes
on (exit 0); Ctrl-C says where to resume. Faults a CI machine cannot set up for real (an
unwritable or read-only workdir, a full disk) are injected by experiments/faults/. The same
cases are the test table in tests/test_bad_inputs.py.
"""

import dataclasses
import glob
import gzip
import hashlib
import os
import re
import shutil
import signal
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


def write_idx(directory: str, *, bad_label: int | None = None, test_size: int = 28,
              test_classes: int = 10) -> str:
    """Four small IDX files; optionally label 7 of train set to `bad_label`, test images
    of another size, or test labels of the first `test_classes` classes only."""
    rng = np.random.default_rng(0)
    os.makedirs(directory, exist_ok=True)
    for split, n, size in (("train", 60, 28), ("t10k", 20, test_size)):
        images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        labels = rng.permutation(np.arange(n) % (10 if split == "train" else test_classes))
        labels = labels.astype(np.uint8)
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
    message: str  # regex the error message (or, for exit 0, the output) must match
    config: str = MLP
    workdir: str = "finished"  # "finished": a finished run's copy; "fresh": empty
    module: str = "experiments.fashion_mnist"
    prepare: object = None  # prepare(tmp, workdir) -> extra flags, before the snapshot
    fault: object = None  # fault(tmp) -> REC_LRA_FAULT (experiments/faults/sitecustomize.py)
    exit: int = 1  # 0: a damaged record the run repairs (with a warning) and goes on
    interrupt: bool = False  # Ctrl-C once the first checkpoint is written
    keeps_workdir: bool = True  # nothing in the workdir may change (not after a Ctrl-C)


FAULTS = os.path.join(REPO, "experiments", "faults")


def _workdir_file(tmp: str, workdir: str) -> list:
    with open(os.path.join(tmp, "afile"), "w") as f:
        f.write("not a directory\n")
    return [f"--workdir={tmp}/afile"]


def _damage_array(tmp: str, workdir: str) -> list:
    """Flips bytes of the newest checkpoint's largest array file."""
    step = max(int(d) for d in os.listdir(f"{workdir}/checkpoints") if d.isdigit())
    files = glob.glob(f"{workdir}/checkpoints/{step}/state/ocdbt.process_0/d/*")
    path = max(files, key=os.path.getsize)
    data = bytearray(open(path, "rb").read())
    data[100::7] = bytes(b ^ 0xFF for b in data[100::7])
    open(path, "wb").write(bytes(data))
    return ["--config.num_epochs=3"]  # a longer run must restore it


def _damage_meta(tmp: str, workdir: str) -> list:
    step = max(int(d) for d in os.listdir(f"{workdir}/checkpoints") if d.isdigit())
    with open(f"{workdir}/checkpoints/{step}/meta/metadata", "w") as f:
        f.write('{"best_val_accura')
    return ["--config.num_epochs=3"]


def _truncate(name: str, keep: int = 0):
    def prepare(tmp: str, workdir: str) -> list:
        path = os.path.join(workdir, name)
        text = open(path).read()
        open(path, "w").write(text[:keep or len(text) // 2])
        return []
    return prepare


def _truncate_last_line(tmp: str, workdir: str) -> list:
    """A kill while the last epoch's line was being written, before results.json."""
    path = os.path.join(workdir, "metrics.jsonl")
    text = open(path).read()
    open(path, "w").write(text[:-40])
    os.remove(os.path.join(workdir, "results.json"))
    return []


def _corrupt_cache(tmp: str, workdir: str) -> list:
    """An image folder whose decoded-image cache was cut short (a full disk, a kill)."""
    root = write_folder(tmp + "/f")
    flags = ["--config.data.source=folder", f"--config.data.dir={root}",
             f"--config.data.cache_dir={tmp}/cache", "--config.data.val_size=2",
             "--config.num_epochs=1", "--config.batch_size=4"]
    from rec_lra_jax import folder  # noqa: PLC0415

    folder.load_arrays(root, (28, 28, 1), cache_dir=f"{tmp}/cache")  # as the run will
    (path,) = glob.glob(f"{tmp}/cache/*.npz")
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])
    return flags


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
         prepare=lambda tmp, w: [f"--config.data.dir={write_idx(tmp + '/idx', bad_label=255)}"]),
    Case("test images of another shape", [],
         r"t10k-images-idx3-ubyte\.gz: images are 32x32x1 but this dataset's are 28x28x1",
         config="configs/fmnist_mlp.py", workdir="fresh",
         prepare=lambda tmp, w: [f"--config.data.dir={write_idx(tmp + '/idx', test_size=32)}"]),
    Case("validation split larger than train", ["--config.data.val_size=100"],
         r"data\.val_size=100 must be in \[1, 60\) for the 60 training examples",
         config="configs/fmnist_mlp.py", workdir="fresh",
         prepare=lambda tmp, w: [f"--config.data.dir={write_idx(tmp + '/idx')}"]),
    Case("missing data directory", ["--config.data.dir=/nonexistent/fmnist"],
         r"Data directory '/nonexistent/fmnist' does not exist",
         config="configs/fmnist_mlp.py", workdir="fresh"),
    Case("no copy of MNIST, offline", [], r"No copy of 'mnist' found", workdir="fresh",
         config="configs/mnist_mlp.py", module="experiments.mnist"),
    Case("no copy of CIFAR-10, offline", [], r"No copy of 'cifar10' found", workdir="fresh",
         config="configs/cifar10_resnet18.py", module="experiments.cifar10"),
    Case("corrupt image in a folder", [], r"cannot decode .*train/dog/002\.jpg",
         config="configs/cifar10_resnet18.py", module="experiments.cifar10", workdir="fresh",
         prepare=lambda tmp, w: [f"--config.data.dir={write_folder(tmp + '/f', corrupt=True)}",
                              f"--config.data.cache_dir={tmp}/cache"]),
    Case("empty class folder", [], r"Class folder .*train/owl holds no JPEG or PNG images",
         config="configs/cifar10_resnet18.py", module="experiments.cifar10", workdir="fresh",
         prepare=lambda tmp, w: [f"--config.data.dir={write_folder(tmp + '/f', empty='owl')}"]),
    Case("class folders differ", [], r"only in train: \['owl'\], only in test: \['emu'\]",
         config="configs/cifar10_resnet18.py", module="experiments.cifar10", workdir="fresh",
         prepare=lambda tmp, w: [f"--config.data.dir={write_folder(tmp + '/f', test_classes=('cat', 'dog', 'emu'))}"]),  # noqa: E501
    Case("one class", [], r"train holds 1 class folder\(s\) \['cat'\]: a classifier needs at "
         r"least two", config="configs/cifar10_resnet18.py", module="experiments.cifar10",
         workdir="fresh",
         prepare=lambda tmp, w: [f"--config.data.dir={write_folder(tmp + '/f', classes=('cat',))}"]),  # noqa: E501
    Case("a class missing from a split", [], r"t10k-labels-idx1-ubyte\.gz: the test split has "
         r"examples of classes \[0, 1, 2, 3, 4, 5, 6, 7, 8\] only; classes \[9\] have none",
         config="configs/fmnist_mlp.py", workdir="fresh",
         prepare=lambda tmp, w: [f"--config.data.dir={write_idx(tmp + '/idx', test_classes=9)}"]),
    Case("missing config file", [], r"cannot load the config file 'configs/nope\.py': no such "
         r"file", config="configs/nope.py"),
    Case("unknown config argument", [], r"--config=configs/fmnist_mlp\.py:bogus: Unknown "
         r"config argument 'bogus'", config="configs/fmnist_mlp.py:bogus"),
    Case("workdir is a file", [], r"--workdir .*afile is a file, not a directory",
         prepare=_workdir_file),
    Case("workdir not writable", [], r"--workdir .*is not writable \(Permission denied",
         workdir="fresh", fault=lambda tmp: f"unwritable:{tmp}/workdir"),
    Case("workdir on a read-only file system", [], r"is not writable \(Read-only file system",
         fault=lambda tmp: f"readonly:{tmp}/workdir"),
    Case("disk full", [], r"No space left on device while saving step 10 .*there was no "
         r"earlier checkpoint. Free space and re-run the same command to resume",
         workdir="fresh", keeps_workdir=False, fault=lambda tmp: "enospc:10"),
    Case("damaged checkpoint array", [], r"Checkpoint at step 32 .*cannot be restored "
         r"\(ValueError: .*ZSTD.*It was left in place", prepare=_damage_array),
    Case("damaged checkpoint metadata", [], r"Checkpoint at step 32 .*cannot be restored "
         r"\(JSONDecodeError", prepare=_damage_meta),
    Case("truncated config.json", [], r"config\.json is unreadable .*treating it as missing",
         exit=0, keeps_workdir=False, prepare=_truncate("config.json")),
    Case("truncated results.json", [], r"results\.json is unreadable .*treating it as missing",
         exit=0, keeps_workdir=False, prepare=_truncate("results.json")),
    Case("partial last line of metrics.jsonl", [], r"metrics\.jsonl: left out 1 unreadable "
         r"line", exit=0, keeps_workdir=False, prepare=_truncate_last_line),
    Case("truncated image cache", [], r"image cache .*is unreadable .*rebuilding it",
         workdir="fresh", exit=0, keeps_workdir=False, prepare=_corrupt_cache),
    Case("Ctrl-C", ["--config.num_epochs=400"], r"Interrupted at step \d+; the last checkpoint "
         r"is step \d+ in .*; re-run the same command to resume", workdir="fresh",
         interrupt=True, keeps_workdir=False),
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
    extra = case.prepare(tmp, workdir) if case.prepare else []
    before = snapshot(workdir)
    cmd = [sys.executable, "-m", case.module, f"--config={case.config}",
           f"--workdir={workdir}", *case.flags, *extra]
    env = _env(tmp)
    if case.fault:
        env.update(REC_LRA_FAULT=case.fault(tmp), PYTHONPATH=f"{FAULTS}:{REPO}")
    start = time.perf_counter()
    if case.interrupt:
        stderr, code = _interrupted(cmd, env, os.path.join(workdir, "checkpoints"))
    else:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                              env=env)
        stderr, code = proc.stderr, proc.returncode
    seconds = time.perf_counter() - start
    message = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    error = stderr[stderr.rfind("error: "):] if "error: " in stderr else ""
    found = re.search(case.message, error if case.exit else stderr, re.S)
    if case.exit:
        lines = error[len("error: "):].splitlines() or [message]
        shown = lines[0] + (" " + lines[1].strip(" -") if lines[0].endswith(":") else "")
    else:  # the warning line that says what was repaired
        shown = stderr[stderr.rfind("\n", 0, found.start()) + 1:].splitlines()[0] if found else ""
        shown = shown.split("] ", 1)[-1]
    return {"exit": code, "seconds": seconds, "message": message, "shown": shown,
            "error": error, "matches": bool(found),
            "traceback": "Traceback" in stderr,
            "unchanged": snapshot(workdir) == before,
            "tfds_written": os.path.exists(os.path.join(tmp, "home", "tensorflow_datasets"))}


def _interrupted(cmd: list, env: dict, checkpoints: str) -> tuple[str, int]:
    """Runs `cmd`, presses Ctrl-C (SIGINT) once its first checkpoint exists."""
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, env=env,  # SIGINT as in a terminal, even if ignored here
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not (
            os.path.isdir(checkpoints) and any(d.isdigit() for d in os.listdir(checkpoints))):
        time.sleep(0.2)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        stderr = proc.communicate(timeout=120)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        stderr = proc.communicate()[1] + "\n(still running 120 s after Ctrl-C)"
    return stderr, proc.returncode


def passed(case: Case, r: dict) -> bool:
    """Exit code as expected, the message found, no traceback, nothing lost or written."""
    return (r["exit"] == case.exit and r["matches"] and not r["traceback"]
            and (r["unchanged"] or not case.keeps_workdir) and not r["tfds_written"])


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
            ok = passed(case, r)
            failures += not ok
            kept = ("yes" if r["unchanged"] else "NO") if case.keeps_workdir else "repaired" if (
                case.exit == 0) else "resumable"
            print(f"| {case.name} | {r['exit']} | {r['seconds']:.1f} | {kept} | "
                  f"{r['shown'][:160]}{'' if ok else ' **(FAILED)**'} |", flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    app.run(main)
