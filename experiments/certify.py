r"""Certifies that a config's train step has no weight transport (rec_lra_jax.certify).

  python -m experiments.certify --config=configs/fmnist_resnet18.py
  python -m experiments.certify --config=configs/resnet50.py --config.rule=bp

Traces one train step on zero inputs (no dataset, no compilation) and exits 0 with the
reasons when certified, 1 with the offending layer and operation when not. The first line
names the rule's wiring and its target hops beside backprop's (docs/algorithm.md).
"""

import sys

from absl import flags
from ml_collections import config_flags

from experiments import shell
from rec_lra_jax import builder

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/fmnist_resnet18.py.",
                                lock_config=True)
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    config = FLAGS.config
    builder.validate(config, overridden=shell.overridden())
    certificate = builder.certify_config(config)
    hops, path = builder.target_hops(config), builder.target_hops(config, "bp")
    print(f"rule={config.rule} model={config.model.name} wiring: "
          f"{builder.describe_wiring(config)}; target hops {hops} (backprop's: {path})")
    print(certificate)
    sys.exit(0 if certificate.certified else 1)


if __name__ == "__main__":
    shell.run_main(main)
