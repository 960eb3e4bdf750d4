r"""The critical path of each rule's wiring on a config's model: levels, width, groups.

  python -m experiments.wiring --config=configs/cifar10_resnet18.py:cpu
  python -m experiments.wiring --config=configs/fmnist_mlp.py --rules=rec_lra,lra_e,dfa,bp

Shapes only (nothing is trained or read from data). For each rule: its wiring, its target
hops (the critical path: sequential sweep steps from the output error to the last target;
backprop's is its number of weight layers), how many units each level holds (a level's
units can be computed side by side), the widest level, and how many groups of same-level
units have drives of the same kinds and shapes (one batched carry each). Autodiff rules
(bp, fa, sign_symmetry) report backprop's path, the Kolen-Pollack chain's.
"""

from absl import flags
from ml_collections import config_flags

from experiments import shell
from rec_lra_jax import builder, sources
from rec_lra_jax import wiring as wiring_lib

FLAGS = flags.FLAGS


def report(config, rules) -> str:
    """A Markdown table: rule, wiring, target hops, units per level, widest level, groups."""
    lines = ["| rule | wiring | target hops | units per level (level: units) | widest level "
             "| groups |", "| --- | --- | --- | --- | --- | --- |"]
    for rule in rules:
        graph = builder.create_graph(config, rule)
        levels = wiring_lib.levels(graph)
        per_level = " ".join(f"{h}:{len(units)}" for h, units in levels.items())
        lines.append(f"| {rule} | {builder.describe_wiring(config, rule)} | "
                     f"{wiring_lib.critical_path(graph)} | {per_level} | "
                     f"{max(len(u) for u in levels.values())} | "
                     f"{len(wiring_lib.groups(graph))} |")
    return "\n".join(lines)


def main(argv):
    del argv
    config = FLAGS.config
    rules = FLAGS.rules or list(builder.rules_for(config))
    builder.validate(config, rules_run=rules, overridden=shell.overridden())
    info = sources.DATASETS[config.dataset]
    print(f"{builder.describe_model(config, info.image_shape, info.num_classes)} on "
          f"{config.dataset}")
    print(report(config, rules))


if __name__ == "__main__":  # flags only here: tests import report()
    flags.DEFINE_list("rules", [], "Rules to report; default: every rule of the family.")
    config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
    flags.mark_flags_as_required(["config"])
    shell.run_main(main)
