"""What every command-line entry point shares: flag parsing and one-line user errors.

Errors a user can fix (a bad config key or value, missing or corrupt data, a workdir made
with another config, a corrupt checkpoint, a diverged run) end the process with exit code
1 and one message, not a traceback. This module defines no flags.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from rec_lra_jax import checkpoints, config_schema, input_pipeline, rundir, train

FLAGS = flags.FLAGS
USER_ERRORS = (config_schema.ConfigError, input_pipeline.DataError, rundir.ConfigChangedError,
               checkpoints.CheckpointError, train.NonFiniteError)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a mistyped config key reported as one line."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"error: {e}\nPass --helpfull to see the flags.")
    except (AttributeError, KeyError) as e:  # ml_collections: an override of an unknown key
        text = e
        while isinstance(text, BaseException) and text.args:  # AttributeError(KeyError(str))
            text = text.args[0]
        name, _, suggestion = str(text).partition("\n")
        name = name.strip("'\"")
        keys = [a[len("--config."):].split("=")[0] for a in argv[1:] if a.startswith("--config.")]
        key = next((k for k in keys if k.split(".")[-1] == name), name)
        hint = f" {suggestion.strip()}" if suggestion.strip() else ""
        sys.exit(f"error: unknown config key {key!r}{family_hint(key)}.{hint} "
                 f"configs/base.py lists every key.")


def family_hint(key: str) -> str:
    """', lra.module_size has no effect on ResNets' for a key of one model family only."""
    for family, keys in config_schema.FAMILIES.items():
        others = [f for f in config_schema.FAMILIES if f != family]
        if key in keys and not any(key in config_schema.FAMILIES[f] for f in others):
            other = config_schema.FAMILY_NAMES[others[0]]
            return (f": {key} has no effect on {other} (only "
                    f"{config_schema.FAMILY_NAMES[family]} read it)")
    return ""


def overridden() -> set[str]:
    """The config keys set on the command line (--config.a.b=...)."""
    return set(config_flags.get_override_values(FLAGS["config"]))


def run_main(main) -> None:
    """app.run(main) with `parse_flags`, and USER_ERRORS turned into one-line exits."""

    def wrapped(argv):
        # Orbax logs every save step by step at INFO; keep the progress lines readable.
        logging.get_absl_handler().addFilter(lambda r: "orbax" not in r.pathname)
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        try:
            main(argv)
        except USER_ERRORS as e:
            sys.exit(f"error: {e}")

    app.run(wrapped, flags_parser=parse_flags)
