"""The run directory's records: config.json (a changed config is refused) and results.json.

A workdir belongs to one config. `check_config` compares the config with the one saved
there and refuses a run whose config differs in any key that changes the results, listing
them, unless the caller allows it (`--allow_config_change`). Raising num_epochs (to extend
a run) and the keys in FREE_KEYS (logging, evaluation batching, data readers, checkpoint
cadence) may change freely, and a key added since (ADDED_KEYS) matches a saved config without it
when it holds the value that reproduces the old runs. Keys that neither config's rule
reads (config_schema.unread: rec-LRA's beta in a backprop run) may differ too. Only
process 0 writes these files.
"""

import json
import os
from typing import Any

from rec_lra_jax import config_schema

# Keys that do not change what a run computes (up to float summation order).
FREE_KEYS = frozenset({
    "log_every_steps", "eval_batch_size", "steps_per_call", "checkpoint_every_epochs",
    "keep_checkpoints", "data.threads", "data.processes", "data.cache_dir", "diagnostics.cosine",
    "diagnostics.test_curve",
})

# Keys added after runs were saved, with the value that reproduces those runs: a saved
# config without the key matches a config holding that value.
ADDED_KEYS = {"model.init_scale": 1.0, "lra.weight_mirror": 0.0, "lra.module": "block",
              "lra.local_loss": "none", "lra.local_loss_grid": 1,
              "lra.local_loss_hidden": 0, "lra.local_loss_recon": 0.0,
              "lra.skip_learning": "kp",
              "lra.skip_activity": False}


class ConfigChangedError(RuntimeError):
    """The workdir holds a run made with a different config."""


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


def check_config(workdir: str, config: dict, *, has_checkpoint: bool,
                 allow_change: bool = False) -> dict | None:
    """The config saved in workdir (None if none); refuses a changed one (see module doc).

    A workdir without a checkpoint has nothing to lose, so its saved config is replaced.

    Raises:
      ConfigChangedError listing the differing keys.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        saved = json.load(f)["config"]
    changes = config_changes(saved, config)
    if changes and has_checkpoint and not allow_change:
        raise ConfigChangedError(
            f"{workdir} holds a run made with a different config; resuming it would mix "
            f"the two. Differences (saved -> now):\n  - " + "\n  - ".join(changes) +
            "\nUse a fresh --workdir, or pass --allow_config_change to resume anyway "
            "(extending num_epochs needs no flag).")
    return saved


def write_json(path: str, record: dict) -> None:
    """Writes `record` atomically (a temporary file, then a rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, path)


def write_config(workdir: str, config: dict, resolved: dict) -> None:
    write_json(os.path.join(workdir, "config.json"),
               {"config": _json_ready(config), "resolved": resolved})


def read_results(workdir: str) -> dict | None:
    path = os.path.join(workdir, "results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)
