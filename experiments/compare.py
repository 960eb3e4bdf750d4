r"""Trains several rules on one config (same model, data, epochs, seed) and tabulates them.

  python -m experiments.compare --config=configs/fmnist_mlp.py --workdir=/tmp/cmp \
      --rules=rec_lra,bp,lra_e,fa,dfa

Each rule trains in <workdir>/<rule> (resuming if interrupted; a finished rule is not
re-run). The table goes to stdout and to <workdir>/comparison.md and comparison.json.
"epochs to X %" is the first epoch whose validation accuracy (metrics.jsonl) reaches
--reach; "-" when no epoch did.
"""

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

from rec_lra_jax import rules, train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Parent directory; each rule trains in <workdir>/<rule>.")
flags.DEFINE_list("rules", ["rec_lra", "bp"], f"Rules to compare, from {rules.RULES}.")
flags.DEFINE_float("reach", 0.9, "Validation accuracy for the 'epochs to' column.")
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


def format_table(results: list[dict], reach: float | None = None) -> str:
    """A Markdown table of results.json records (with "epochs_to" when `reach` is set)."""
    extra = f" epochs to {100 * reach:g} % val |" if reach is not None else ""
    header = (f"| rule | test acc (%) | best val acc (%) | epochs | train time (s) | s / epoch |"
              f"{extra}\n| --- | --- | --- | --- | --- | --- |{' --- |' if extra else ''}")
    rows = []
    for r in results:
        row = (f"| {r['rule']} | {100 * r['test_accuracy']:.2f} | "
               f"{100 * r['best_val_accuracy']:.2f} | {r['epochs']} | {r['train_seconds']:.1f} | "
               f"{r['train_seconds'] / r['epochs']:.2f} |")
        if extra:
            row += f" {r.get('epochs_to') or '-'} |"
        rows.append(row)
    return "\n".join([header, *rows])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(lambda r: "orbax" not in r.pathname)
    unknown = [r for r in FLAGS.rules if r not in rules.RULES]
    if unknown:
        raise app.UsageError(f"Unknown rules {unknown}; choose from {rules.RULES}.")
    results = []
    for rule in FLAGS.rules:
        config = FLAGS.config.copy_and_resolve_references()
        config.rule = rule
        workdir = os.path.join(FLAGS.workdir, rule)
        done = os.path.join(workdir, "results.json")
        if os.path.exists(done):
            with open(done) as f:
                result = json.load(f)
            if result["epochs"] == config.num_epochs and result["steps"] > 0:
                logging.info("%s already trained in %s; reusing its results.", rule, workdir)
                results.append(result)
                continue
        print(f"=== training {rule} ({config.num_epochs} epochs on {config.dataset}) ===",
              flush=True)
        results.append(train.train_and_evaluate(config, workdir))
    for rule, result in zip(FLAGS.rules, results, strict=True):
        result["epochs_to"] = epochs_to(os.path.join(FLAGS.workdir, rule), FLAGS.reach)
    table = format_table(results, FLAGS.reach)
    first = results[0]
    title = (f"{first['dataset']}, {first['model']}, seed {first['seed']}, "
             f"data from {first['data_source']}")
    print(f"\n{title}\n\n{table}\n", flush=True)
    with open(os.path.join(FLAGS.workdir, "comparison.md"), "w") as f:
        f.write(f"{title}\n\n{table}\n")
    with open(os.path.join(FLAGS.workdir, "comparison.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
