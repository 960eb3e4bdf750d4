"""Orbax checkpoints of the train state plus a JSON record of loop progress.

`<workdir>/checkpoints` keeps the newest `keep` checkpoints; `<workdir>/best` keeps the one
with the best validation accuracy, which rotation never removes. Failures reach the user as
one `CheckpointError` line with the cause (a shape mismatch, a full disk), never as orbax's
or TensorStore's tracebacks, and nothing already on disk is deleted (one exception: a
resumed run replacing a best checkpoint of the epoch it is passing again deletes the old
one just before it saves the new one; `Checkpoints.save`).
"""

import contextlib
import errno
import os
import sys
import tempfile
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or restored."""


def manager(directory: str, *, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """A synchronous manager over `directory` keeping its newest `max_to_keep` steps."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_handlers={
        "state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})


class Checkpoints:
    """The run's newest checkpoints and its best one."""

    def __init__(self, workdir: str, *, keep: int = 2):
        self.latest = manager(os.path.join(workdir, "checkpoints"), max_to_keep=keep)
        self.best = manager(os.path.join(workdir, "best"), max_to_keep=1)

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def save(self, step: int, state: Any, meta: dict, *, best: bool = False) -> None:
        """Saves `state` (a pytree of arrays) and `meta` (JSON) at `step`.

        A best checkpoint at `step` or later is one the run wrote before it was stopped
        and resumed from an earlier step (an epoch ends between two checkpoints): the
        resumed run is passing that epoch again, so its new best replaces the old one.
        """
        if best:
            stale = [s for s in self.best.all_steps() if s >= step]
            if stale:
                logging.info("Replacing the best checkpoint(s) at step(s) %s, written before "
                             "this run resumed, with step %d.",
                             ", ".join(map(str, stale)), step)
            for s in stale:
                self.best.delete(s)
        save(self.best if best else self.latest, step, state, meta)

    def restore_latest(self, template: Any) -> tuple[Any, dict] | None:
        return restore_latest(self.latest, template)

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def _cause(e: BaseException) -> BaseException:
    """The innermost exception of a chain (orbax wraps the OSError that says why)."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    return e


def _why(e: BaseException) -> str:
    """'Type: message' of the innermost cause, on one line, at most 300 characters."""
    cause = _cause(e)
    text = " ".join(str(cause).split())
    return f"{type(cause).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


def _no_space(e: BaseException) -> bool:
    chain = [e]
    while chain[-1].__cause__ or chain[-1].__context__:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    return any((isinstance(x, OSError) and x.errno == errno.ENOSPC)
               or "No space left" in str(x) for x in chain)


@contextlib.contextmanager
def _held_stderr():
    """Holds what is written to file descriptor 2 and passes it on only if the block ends
    without an error: when a write fails (a full disk), orbax's and TensorStore's worker
    threads print tracebacks of their own around the one-line CheckpointError."""
    sys.stderr.flush()
    original = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(original, 2)
            os.close(original)
            if not failed:
                held.seek(0)
                text = held.read()
                if text:
                    os.write(2, text)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
    """Saves `state` and `meta` at `step`; a failure leaves the earlier checkpoints intact."""
    previous = mngr.latest_step()
    try:
        with _held_stderr():
            _save(mngr, step, state, meta)
    except Exception as e:  # orbax and TensorStore raise many types
        kept = (f"the previous checkpoint (step {previous}) is intact" if previous is not None
                else "there was no earlier checkpoint")
        if _no_space(e):
            raise CheckpointError(f"No space left on device while saving step {step} in "
                                  f"{mngr.directory}; {kept}. Free space and re-run the same "
                                  f"command to resume.") from None
        raise CheckpointError(f"Could not save step {step} in {mngr.directory} "
                              f"({_why(e)}); {kept}.") from None


def _save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            meta=ocp.args.JsonSave(meta)), force=True)
    mngr.wait_until_finished()


def tree_name(path) -> str:
    """'params/layer_00/kernel' for a pytree path of dict, attribute or sequence keys."""
    parts = [getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path]
    return "/".join(str(p) for p in parts)


MODEL_TREES = ("step", "params", "feedback", "batch_stats")


def _shape_mismatches(mngr: ocp.CheckpointManager, step: int, template: Any) -> list[str]:
    """'params/layer_00/kernel: checkpoint (a, b), config (c, d)' for every tensor of the
    model (params, synapses, BatchNorm statistics) whose shape differs or that one lacks."""
    try:
        stored = mngr.item_metadata(step)["state"]
        stored = {tree_name(p): tuple(m.shape) for p, m in
                  jax.tree_util.tree_leaves_with_path(stored)}
    except Exception:  # no readable metadata: nothing to compare
        return []
    wanted = {tree_name(p): tuple(np.shape(x)) for p, x in
              jax.tree_util.tree_leaves_with_path(template)}
    keys = sorted((k for k in set(stored) | set(wanted) if k.split("/")[0] in MODEL_TREES),
                  key=lambda k: (MODEL_TREES.index(k.split("/")[0]), k))
    out = []
    for key in keys:
        have, want = stored.get(key), wanted.get(key)
        if have != want:
            out.append(f"{key}: checkpoint {have or 'none'}, config {want or 'none'}")
    return out


def latest_step(directory: str) -> int | None:
    """The newest finished checkpoint's step under `directory` (None if none)."""
    if not os.path.isdir(directory):
        return None
    steps = [int(d) for d in os.listdir(directory) if d.isdigit()]
    return max(steps) if steps else None


def read_meta(directory: str) -> dict | None:
    """The JSON record of the newest checkpoint under `directory` (None if there is none or
    it cannot be read), without touching its arrays."""
    if latest_step(directory) is None:
        return None
    mngr = manager(directory)
    try:
        step = mngr.latest_step()
        if step is None:
            return None
        return dict(mngr.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"])
    except Exception:  # unreadable: the restore itself reports it
        return None
    finally:
        mngr.close()


def restore_latest(mngr: ocp.CheckpointManager, template: Any) -> tuple[Any, dict] | None:
    """Restores the newest checkpoint into `template`'s structure, or None if there is none.

    Raises:
      CheckpointError when the newest checkpoint is unreadable or was made for another
      model (its message lists the differing tensors). Nothing is deleted.
    """
    step = mngr.latest_step()
    if step is None:
        return None
    mismatches = _shape_mismatches(mngr, step, template)
    if mismatches:
        listed = "; ".join(mismatches[:4]) + (" ..." if len(mismatches) > 4 else "")
        raise CheckpointError(
            f"The checkpoint at step {step} in {mngr.directory} was made for another model: "
            f"{listed}. It was left in place; use a fresh --workdir for this config.")
    try:
        with _held_stderr():
            restored = mngr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types for unreadable data
        raise CheckpointError(
            f"Checkpoint at step {step} in {mngr.directory} cannot be restored "
            f"({_why(e)}). It was left in place; move it aside to restart from an earlier "
            f"checkpoint, or use a fresh --workdir.") from None
    logging.info("Restored checkpoint at step %d from %s.", step, mngr.directory)
    return restored["state"], dict(restored["meta"])
