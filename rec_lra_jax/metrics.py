"""What a run reports: metrics.jsonl, TensorBoard event files, and progress lines.

`MetricsWriter` writes one JSON line per epoch to `<workdir>/metrics.jsonl` and the same
scalars (plus per-step training scalars) to TensorBoard event files in
`<workdir>/tensorboard` with tensorboardX (no TensorFlow). On resume both are cut back to
the checkpoint's step, so a resumed run's files match an uninterrupted run's.
`EpochAverages` keeps an epoch's running training sums in the checkpoint, so the epoch
that was interrupted reports the same averages. `Progress` prints periodic progress lines
with the compile time kept out of the steps/s figure, and the ETAs of the epoch and run.
"""

import datetime
import json
import math
import os
import time

from absl import logging


class MetricsWriter:
    """metrics.jsonl and TensorBoard scalars; a no-op when `enabled` is False (process > 0)."""

    def __init__(self, workdir: str, *, start_step: int, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        if not enabled:
            return
        trim_jsonl(self.path, start_step)
        from tensorboardX import SummaryWriter  # noqa: PLC0415 - only the writer needs it

        # purge_step makes TensorBoard drop events after the checkpoint from earlier files.
        self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                                purge_step=start_step + 1 if start_step else None,
                                flush_secs=30)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """TensorBoard scalars at `step` (non-finite values are skipped)."""
        if self.tb is None:
            return
        for name, value in values.items():
            if isinstance(value, int | float) and math.isfinite(value):
                self.tb.add_scalar(name, value, step)

    def epoch(self, record: dict) -> None:
        """One epoch's record: a metrics.jsonl line and its scalars in TensorBoard."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.scalars(record["step"], {k: v for k, v in record.items() if k not in ("step",)})
        self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _records(path: str) -> list[tuple[str, dict]]:
    """(line, record) of each readable line of `path`; an unreadable line (a crash cut the
    last one short, or it was damaged) is left out with a warning."""
    out, bad = [], 0
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                    raise ValueError("not an epoch record")
            except ValueError:
                bad += 1
                continue
            out.append((line if line.endswith("\n") else line + "\n", record))
    if bad:
        logging.warning("%s: left out %d unreadable line(s) (cut short by a crash?).", path, bad)
    return out


def trim_jsonl(path: str, max_step: int) -> None:
    """Keeps the records of `path` with step <= max_step (those a checkpoint covers) and
    drops unreadable lines (a partial last line after a crash)."""
    if not os.path.exists(path):
        return
    records = [line for line, record in _records(path) if record["step"] <= max_step]
    with open(path, "w") as f:
        f.writelines(records)


def read_jsonl(path: str) -> list[dict]:
    """The readable records of a metrics.jsonl (none if it does not exist)."""
    if not os.path.exists(path):
        return []
    return [record for _, record in _records(path)]


class EpochAverages:
    """Running sums of per-step training metrics within an epoch, JSON-serialisable.

    Sums run step by step in float64, in step order, so an epoch split by a checkpoint
    gives bit-identical averages. Non-finite losses (steps skipped by
    on_nonfinite="skip") are counted apart.
    """

    def __init__(self, state: dict | None = None):
        self.state = dict(state or {"loss": 0.0, "accuracy": 0.0, "steps": 0, "skipped": 0})

    def add(self, losses, accuracies) -> None:
        for loss, accuracy in zip(losses, accuracies, strict=True):
            if math.isfinite(loss):
                self.state["loss"] += float(loss)
                self.state["accuracy"] += float(accuracy)
                self.state["steps"] += 1
            else:
                self.state["skipped"] += 1

    def averages(self) -> dict[str, float]:
        n = self.state["steps"]
        out = {"train_loss": self.state["loss"] / n if n else float("nan"),
               "train_accuracy": self.state["accuracy"] / n if n else float("nan")}
        if self.state["skipped"]:
            out["skipped_steps"] = self.state["skipped"]
        return out


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds))) if math.isfinite(seconds) else "?"


class Progress:
    """Progress lines every `every` steps: loss, steps/s after compilation, compile time, ETAs.

    The loop calls `ran(steps)` after dispatching a call, or `compiled(seconds)` for a call
    that compiled a new program (timed to completion); compile time stays out of the rate.
    `report` is called after a sync, so the rate covers the dispatched work; `restart`
    drops time spent outside training (evaluation, checkpoints) from the window.
    """

    def __init__(self, *, every: int, total_steps: int, steps_per_epoch: int, start_step: int):
        self.every, self.total, self.per_epoch = every, total_steps, steps_per_epoch
        self.compile_seconds, self.last = 0.0, start_step
        self.rate = float("nan")
        self.restart()

    def restart(self) -> None:
        self._t0, self._steps, self._compile = time.perf_counter(), 0, 0.0

    def ran(self, steps: int) -> None:
        self._steps += steps

    def compiled(self, seconds: float) -> None:
        self.compile_seconds += seconds
        self._compile += seconds

    def due(self, step: int) -> bool:
        return bool(self.every) and step // self.every > self.last // self.every

    def report(self, step: int, loss: float) -> str:
        elapsed = time.perf_counter() - self._t0 - self._compile
        if self._steps and elapsed > 0:
            self.rate = self._steps / elapsed
        self.last = step
        self.restart()
        epoch_left = -step % self.per_epoch
        epoch = -(-step // self.per_epoch)
        line = (f"step {step}/{self.total} (epoch {epoch}): train_loss {loss:.4f}, "
                f"{self.rate:.2f} steps/s, compile {self.compile_seconds:.1f} s, "
                f"epoch ETA {_clock(epoch_left / self.rate)}, "
                f"run ETA {_clock((self.total - step) / self.rate)}")
        logging.info("%s", line)
        return line


class Stopwatch:
    """Wall time between start() and stop() calls, accumulated onto `seconds`."""

    def __init__(self, seconds: float = 0.0):
        self.seconds, self._t0 = seconds, 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self) -> float:
        """Adds the time since start() and returns the total."""
        self.seconds += time.perf_counter() - self._t0
        return self.seconds


def results_table(results: list[dict], reach: float | None = None) -> str:
    """A Markdown table of results.json records (with "epochs_to" when `reach` is set, and
    "epochs_to_bp" when the records have it)."""
    extra = f" epochs to {100 * reach:g} % val |" if reach is not None else ""
    to_bp = any("epochs_to_bp" in r for r in results)
    header = (f"| rule | wiring | target hops | test acc (%) | best val acc (%) | epochs | "
              f"train time (s) | s / epoch |{extra}{' epochs to bp - 1 |' if to_bp else ''}\n"
              f"| --- | --- | --- | --- | --- | --- | --- | --- |{' --- |' if extra else ''}"
              f"{' --- |' if to_bp else ''}")
    rows = []
    for r in results:
        row = (f"| {r['rule']} | {r.get('wiring', '-')} | {r.get('target_hops', '-')} | "
               f"{100 * r['test_accuracy']:.2f} | "
               f"{100 * r['best_val_accuracy']:.2f} | {r['epochs']} | {r['train_seconds']:.1f} | "
               f"{r['train_seconds'] / r['epochs']:.2f} |")
        if extra:
            row += f" {r.get('epochs_to') or '-'} |"
        if to_bp:
            row += f" {r.get('epochs_to_bp') or '-'} |"
        rows.append(row)
    return "\n".join([header, *rows])
