r"""Trains several rules on one config (same model, data, epochs, seed) and tabulates them.

  python -m experiments.compare --config=configs/fmnist_mlp.py --workdir=/tmp/cmp \
      --rules=rec_lra,bp,lra_e,fa,dfa

Each rule trains in <workdir>/<rule> through `train.train_and_evaluate`: an interrupted
rule resumes, a finished one is not re-run, and a rule whose workdir was trained under a
different config is refused (a result is never reused across configs). The table goes to
stdout and to <workdir>/comparison.md and comparison.json.
"epochs to X %" is the first epoch whose validation accuracy (metrics.jsonl) reaches
--reach; "-" when no epoch did. With bp among the rules, "epochs to bp - 1" is the first
epoch at which each rule reaches backprop's final validation accuracy minus 1 point. The
plots of `experiments.plot` go to <workdir>/plots/.
"""

import json
import os

from absl import app, flags
from ml_collections import config_flags

from experiments import plot, shell
from rec_lra_jax import builder, metrics, train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Parent directory; each rule trains in <workdir>/<rule>.")
flags.DEFINE_list("rules", ["rec_lra", "bp"], f"Rules to compare, from {builder.RULES}.")
flags.DEFINE_float("reach", 0.9, "Validation accuracy for the 'epochs to' column.")
flags.DEFINE_bool("allow_config_change", False,
                  "Resume rules whose saved config.json differs from this config.")
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/fmnist_mlp.py:demo.",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def epochs_to(workdir: str, threshold: float) -> int | None:
    """The first epoch whose val_accuracy in <workdir>/metrics.jsonl is >= threshold."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            if record["val_accuracy"] >= threshold:
                return int(record["epoch"])
    return None


def final_val_accuracy(workdir: str) -> float | None:
    """The last epoch's val_accuracy in <workdir>/metrics.jsonl."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    return json.loads(lines[-1])["val_accuracy"] if lines else None


def main(argv):
    del argv
    unknown = [r for r in FLAGS.rules if r not in builder.rules_for(FLAGS.config)]
    if unknown:
        raise app.UsageError(f"Unknown rules {unknown} for this model; choose from "
                             f"{builder.rules_for(FLAGS.config)}.")
    builder.validate(FLAGS.config, rules_run=FLAGS.rules, overridden=shell.overridden())
    workdir = builder.expand(FLAGS.workdir)
    results = []
    for rule in FLAGS.rules:
        config = FLAGS.config.copy_and_resolve_references()
        config.rule = rule
        print(f"=== {rule} ({config.num_epochs} epochs on {config.dataset}) ===", flush=True)
        results.append(train.train_and_evaluate(
            config, os.path.join(workdir, rule), rules_run=FLAGS.rules,
            overridden=shell.overridden(), allow_config_change=FLAGS.allow_config_change))
    bp_final = (final_val_accuracy(os.path.join(workdir, "bp")) if "bp" in FLAGS.rules
                else None)
    for rule, result in zip(FLAGS.rules, results, strict=True):
        result["epochs_to"] = epochs_to(os.path.join(workdir, rule), FLAGS.reach)
        if bp_final is not None:
            result["epochs_to_bp"] = epochs_to(os.path.join(workdir, rule), bp_final - 0.01)
    table = metrics.results_table(results, FLAGS.reach)
    first = results[0]
    title = (f"{first['dataset']}, {first['model']}, seed {first['seed']}, "
             f"data from {first['data_source']}")
    print(f"\n{title}\n\n{table}\n", flush=True)
    with open(os.path.join(workdir, "comparison.md"), "w") as f:
        f.write(f"{title}\n\n{table}\n")
    with open(os.path.join(workdir, "comparison.json"), "w") as f:
        json.dump(results, f, indent=2)
    for path in plot.plot(workdir):
        print(f"plot: {path}", flush=True)


if __name__ == "__main__":
    shell.run_main(main)
