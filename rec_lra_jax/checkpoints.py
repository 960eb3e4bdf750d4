"""Orbax checkpointing of the train state plus a small JSON record of loop progress."""

import os
from typing import Any

import orbax.checkpoint as ocp
from absl import logging


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be restored."""


def manager(workdir: str, *, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """A synchronous manager over `<workdir>/checkpoints` keeping the newest checkpoints."""
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
    )
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "meta"))


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
    """Saves `state` (a pytree of arrays) and `meta` (JSON) at `step`."""
    mngr.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=True,
    )
    mngr.wait_until_finished()


def restore_latest(mngr: ocp.CheckpointManager, template: Any) -> tuple[Any, dict] | None:
    """Restores the newest checkpoint into `template`'s structure, or None if there is none.

    Raises:
      CheckpointError when the newest checkpoint is unreadable. Nothing is deleted: the
      message says where it is so the user can move it aside or pick another workdir.
    """
    step = mngr.latest_step()
    if step is None:
        return None
    try:
        restored = mngr.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore()
            ),
        )
    except Exception as e:  # orbax raises many types for unreadable data
        raise CheckpointError(
            f"Checkpoint at step {step} in {mngr.directory} cannot be restored "
            f"({type(e).__name__}: {str(e)[:300]}). It was left in place; move it aside to "
            f"restart from an earlier checkpoint, or use a fresh --workdir."
        ) from e
    logging.info("Restored checkpoint at step %d from %s.", step, mngr.directory)
    return restored["state"], dict(restored["meta"])
