"""What every command-line entry point shares: flag parsing and one-line user errors.

Errors a user can fix (a bad config key or value, missing or corrupt data, a workdir made
with another config, a corrupt checkpoint, a diverged run) end the process with exit code
1 and one message, not a traceback. This module defines no flags.
"""

import logging as std_logging
import os
import sys
import threading

from absl import app, flags, logging
from ml_collections import config_flags

from rec_lra_jax import checkpoints, config_schema, input_pipeline, rundir, train

FLAGS = flags.FLAGS
USER_ERRORS = (config_schema.ConfigError, input_pipeline.DataError, rundir.ConfigChangedError,
               rundir.WorkdirError, checkpoints.CheckpointError, train.NonFiniteError,
               train.Interrupted)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a mistyped config key reported as one line."""
    path = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), "")
    try:
        rest = FLAGS(argv)
        if "config" in FLAGS and FLAGS["config"].present and FLAGS.config is not None:
            FLAGS.config.keys()  # a config file that failed to load raises OSError here
        return rest
    except flags.Error as e:
        text = str(e)
        if "Error whilst parsing config file" in text:  # the config's own error, last line
            cause = [line for line in text.splitlines() if line.strip()][-1].strip()
            sys.exit(f"error: --config={path}: {cause.split(': ', 1)[-1]}")
        sys.exit(f"error: {e}\nPass --helpfull to see the flags.")
    except OSError:  # ml_collections: a config file that does not exist or cannot be read
        file = path.split(":")[0]
        why = "no such file" if not os.path.exists(file) else "it cannot be read"
        sys.exit(f"error: cannot load the config file {file!r}: {why}. Pass the path of a "
                 f"file in configs/ (relative to the directory you run from), e.g. "
                 f"--config=configs/fmnist_mlp.py.")
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
        # When a checkpoint write fails (a full disk), each of orbax's pending asyncio
        # write tasks logs its own traceback; the CheckpointError line says it once.
        std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        try:
            main(argv)
        except USER_ERRORS as e:
            # Orbax's abandoned read and write coroutines report themselves as "Exception
            # ignored" when the interpreter collects them on the way out: the line below
            # already says what failed; so do their worker threads when the interpreter
            # closes their event loops under them ("Event loop is closed", seen on a loaded
            # machine after a damaged checkpoint).
            sys.unraisablehook = lambda unraisable: None
            threading.excepthook = lambda args: None
            sys.exit(f"error: {e}")
        except KeyboardInterrupt:  # outside the training loop (which says its step)
            sys.exit("error: Interrupted before training began; re-run the same command to "
                     "start or resume.")

    app.run(wrapped, flags_parser=parse_flags)
