"""The run directory's records: config.json (a changed config is refused) and results.json.

A workdir belongs to one config. Every checkpoint carries the config history that trained
it (`history_of`), and config.json repeats it. `check_config` compares the config with the
one that trained the workdir's model and refuses a run whose config differs in any key that
changes the results, listing them, unless the caller allows it (`--allow_config_change`:
then the history gains a segment, so the records still say what trained the model); a
`best/` checkpoint of another config is never replaced without that flag either. Raising
num_epochs (to extend a run) and the keys in FREE_KEYS (logging, evaluation batching, data
readers, checkpoint cadence) may change freely, and a key added since (ADDED_KEYS) matches
a saved config without it when it holds the value that reproduces the old runs. Keys that
neither config's rule reads (config_schema.unread: rec-LRA's beta in a backprop run) may
differ too. An unreadable config.json or results.json (cut short by a crash) counts as
missing. Only process 0 writes these files.
"""

import json
import os
from typing import Any

from absl import logging

from rec_lra_jax import config_schema

# Keys that do not change what a run computes (up to float summation order).
FREE_KEYS = frozenset({
    "log_every_steps", "eval_batch_size", "steps_per_call", "checkpoint_every_epochs",
    "keep_checkpoints", "data.threads", "data.processes", "data.cache_dir", "diagnostics.cosine",
    "diagnostics.test_curve", "mesh.data", "mesh.layer",
})

# Keys added after runs were saved, with the value that reproduces those runs: a saved
# config without the key matches a config holding that value.
ADDED_KEYS = {"model.init_scale": 1.0, "model.branch_gradient": True, "lra.grouped": False,
              "mesh.data": 0, "mesh.layer": 1,
              "optim.share_moments": False, "optim.readout_lr_scale": 1.0,
              "dtype": "float32",
              "lra.weight_mirror": 0.0, "lra.module": "block",
              "lra.stem_module": False, "lra.chain": "full", "lra.module_stages": 1,
              "lra.inner_loss": False, "lra.probe_sigma": 0.05,
              "lra.local_loss": "none", "lra.local_loss_grid": 1,
              "lra.local_loss_hidden": 0, "lra.local_loss_recon": 0.0,
              "lra.local_loss_sim": 0.0, "lra.local_loss_conv": 0,
              "lra.local_loss_distill": 0.0, "lra.local_loss_distill_each": (),
              "lra.skip_learning": "kp",
              "lra.skip_activity": False}


class ConfigChangedError(RuntimeError):
    """The workdir holds a run made with a different config."""


class WorkdirError(RuntimeError):
    """The workdir cannot hold a run: a file, or not writable."""


def check_workdir(workdir: str) -> None:
    """Fails fast, before any data is read, if `workdir` cannot hold a run: it is a file, or
    it (or the directory it would be created in) cannot be written. Creates it (every
    process of a multi-process run checks at once, so none may remove what it made).

    Raises:
      WorkdirError naming the path and the cause.
    """
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir {workdir} is a file, not a directory. Pass a directory "
                           f"(it is created if missing).")
    parent = os.path.abspath(workdir)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise WorkdirError(f"--workdir {workdir} cannot be created: {parent} is a file.")
    probe = os.path.join(workdir, f".write_test.{os.getpid()}")
    try:
        os.makedirs(workdir, exist_ok=True)
        with open(probe, "w") as f:
            f.write("rec_lra_jax")
        os.remove(probe)
    except OSError as e:
        raise WorkdirError(f"--workdir {workdir} is not writable ({e.strerror or e}: "
                           f"{e.filename or workdir}). Pass a directory you can write "
                           f"to.") from None


def _json_ready(tree: Any) -> Any:
    """Tuples to lists, so a config compares equal to its JSON round trip."""
    return json.loads(json.dumps(tree))


def config_changes(saved: dict, current: dict) -> list[str]:
    """'key: saved -> current' for every key that differs, except those allowed to."""
    old = config_schema.flatten(_json_ready(saved))
    new = config_schema.flatten(_json_ready(current))
    # Keys neither run reads (rec-LRA's options in a backprop run): if what decides that
    # (rule, data source, an option) differs, that key is listed itself.
    unread = set(config_schema.unread(new)) & set(config_schema.unread(old))
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if key in ADDED_KEYS and a == "<absent>":
            a = ADDED_KEYS[key]
        if a == b or key in FREE_KEYS or key in unread:
            continue
        if key == "num_epochs" and isinstance(a, int) and isinstance(b, int) and b > a:
            continue  # extending a run
        changes.append(f"{key}: {a!r} -> {b!r}")
    return changes


def history_of(meta: dict | None, record: dict | None) -> list[dict] | None:
    """What trained a checkpoint: [{"start_step", "config"}, ...], one segment per config
    it was trained under (a resume with --allow_config_change starts a segment). From the
    checkpoint's own record (`meta`), else from the workdir's config.json (`record`, for
    checkpoints written before they carried it), else None: unknown."""
    if meta and meta.get("history"):
        return meta["history"]
    if record is not None:
        return record.get("history") or [{"start_step": 0, "config": record.get("config")}]
    return None


def segment(start_step: int, config: dict | None) -> dict:
    """One entry of a history: the config that trained the model from `start_step` on."""
    return {"start_step": int(start_step),
            "config": None if config is None else _json_ready(config)}


def _read_json(path: str) -> dict | None:
    """The record in `path`; None if there is none or it is unreadable (cut short by a
    crash or damaged: a warning says so; the run writes it again)."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        return record
    except (ValueError, UnicodeDecodeError) as e:
        logging.warning("%s is unreadable (%s); treating it as missing.", path, e)
        return None


def read_record(workdir: str) -> dict | None:
    """config.json ({"config", "history", "resolved"}), or None if missing or unreadable."""
    record = _read_json(os.path.join(workdir, "config.json"))
    return record if record is not None and isinstance(record.get("config"), dict) else None


def check_config(workdir: str, config: dict, *, history: list[dict] | None,
                 has_checkpoint: bool, best_history: list[dict] | None = None,
                 has_best: bool = False, allow_change: bool = False) -> list[str]:
    """The differences between `config` and the one the workdir's model was trained with.

    With checkpoints, `history` (`history_of` the newest one) says what trained them; a
    changed config, or an unknown one (no config.json beside checkpoints that do not carry
    their config), is refused unless `allow_change`. Without checkpoints, a `best/`
    checkpoint of another (or an unknown) config is refused the same way, since this run
    would replace it. A workdir with neither has nothing to lose.

    Raises:
      ConfigChangedError listing the differing keys.
    """
    fix = ("Use a fresh --workdir, or pass --allow_config_change to resume anyway "
           "(extending num_epochs needs no flag).")
    if has_checkpoint:
        trained = history[-1]["config"] if history else None
        if trained is None:
            if not allow_change:
                raise ConfigChangedError(
                    f"{workdir} holds checkpoints but no record of the config they were "
                    f"trained with (config.json is missing or unreadable); resuming them "
                    f"under this config could mix two runs. {fix}")
            return ["config: unknown -> this config"]
        changes = config_changes(trained, config)
        if changes and not allow_change:
            raise ConfigChangedError(
                f"{workdir} holds a run made with a different config; resuming it would mix "
                f"the two. Differences (saved -> now):\n  - " + "\n  - ".join(changes) +
                f"\n{fix}")
        return changes
    if has_best:
        trained = best_history[-1]["config"] if best_history else None
        changes = (config_changes(trained, config) if trained is not None
                   else ["config: unknown -> this config"])
        if changes and not allow_change:
            raise ConfigChangedError(
                f"{os.path.join(workdir, 'best')} holds the best model of a run made with a "
                f"different config, and this run would replace it. Differences (saved -> "
                f"now):\n  - " + "\n  - ".join(changes) + "\nUse a fresh --workdir, move "
                "best/ aside, or pass --allow_config_change to let this run replace it.")
    return []


def describe_history(history: list[dict], steps: int) -> list[dict]:
    """results.json's "history": each segment's step range [first, end) up to the model's
    `steps`, and how its config differs from the segment before."""
    ends = [s["start_step"] for s in history[1:]] + [steps]
    out = [{"steps": [history[0]["start_step"], ends[0]]}]
    for before, after, end in zip(history[:-1], history[1:], ends[1:], strict=True):
        changes = (config_changes(before["config"], after["config"])
                   if before["config"] is not None and after["config"] is not None
                   else ["config: unknown -> another"])
        out.append({"steps": [after["start_step"], end], "changes": changes})
    return out


def write_json(path: str, record: dict) -> None:
    """Writes `record` atomically (a temporary file, then a rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, path)


def write_config(workdir: str, history: list[dict], resolved: dict) -> None:
    """config.json: the config of the model the workdir holds (the last segment's), its
    history and the facts the run resolved (steps per epoch, data source...)."""
    write_json(os.path.join(workdir, "config.json"),
               {"config": history[-1]["config"], "history": history, "resolved": resolved})


def read_results(workdir: str) -> dict | None:
    """results.json, or None if missing or unreadable."""
    return _read_json(os.path.join(workdir, "results.json"))
