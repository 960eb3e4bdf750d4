"""The training entry points' shell: flags, then `train.train_and_evaluate(config, workdir)`."""

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from experiments import shell
from rec_lra_jax import train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.json.")
flags.DEFINE_bool("allow_config_change", False,
                  "Resume a workdir whose saved config.json differs from this config.")
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/fmnist_mlp.py[:smoke].",
                                lock_config=True)
flags.DEFINE_bool("distributed", False,
                  "Call jax.distributed.initialize() first (multi-host runs; on TPU pods and "
                  "SLURM it finds its peers, elsewhere pass the next three flags).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (--distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes (--distributed).")
flags.DEFINE_integer("process_id", None, "This process's index (--distributed).")
flags.mark_flags_as_required(["config", "workdir"])


def run(dataset: str | None = None) -> None:
    """Trains FLAGS.config; `dataset` (if given) must be the config's dataset."""

    def main(argv):
        del argv
        if FLAGS.distributed:
            jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                       FLAGS.process_id)
        config = FLAGS.config
        if dataset and config.dataset != dataset:
            raise app.UsageError(
                f"This entry point trains on {dataset!r} but the config says {config.dataset!r}.")
        logging.info("Config:\n%s", config)
        train.train_and_evaluate(config, FLAGS.workdir, overridden=shell.overridden(),
                                 allow_config_change=FLAGS.allow_config_change)

    shell.run_main(main)
