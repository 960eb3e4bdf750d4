"""Shared command-line shell: flags, then `train.train_and_evaluate(config, workdir)`."""

from absl import app, flags, logging
from ml_collections import config_flags

from rec_lra_jax import train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.json.")
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/fmnist_mlp.py[:smoke].",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def run(dataset: str | None = None) -> None:
    """Runs app.run on a main that trains FLAGS.config (with `dataset` forced if given)."""

    def main(argv):
        # Orbax logs every save step by step at INFO; keep the progress lines readable.
        logging.get_absl_handler().addFilter(lambda r: "orbax" not in r.pathname)
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        config = FLAGS.config
        if dataset and config.dataset not in (dataset, "synthetic"):
            raise app.UsageError(
                f"This entry point trains on {dataset!r} but the config says {config.dataset!r}.")
        logging.info("Config:\n%s", config)
        train.train_and_evaluate(config, FLAGS.workdir)

    app.run(main)
