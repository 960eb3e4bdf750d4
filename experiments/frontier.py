r"""The frontier: test accuracy against target hops, one point per rule and wiring.

  python -m experiments.frontier --workdir=OUT --runs="DIR/*/s*"

Each run directory (a glob; `experiments.cifar10` and friends write them) holds
config.json and results.json. Runs whose configs differ only in the seed are one point
(mean +- std over seeds). Target hops come from the config (`builder.target_hops`): the
critical path of the rule's sweep, backprop's path for the autodiff baselines. Writes
OUT/frontier.md (the table: rule, wiring, target hops, seeds, test accuracy, and
backprop's over the same seeds where a bp run shares the config) and OUT/frontier.png.
"""

import glob
import json
import os
import statistics

import ml_collections
from absl import flags

from experiments import shell
from rec_lra_jax import builder, config_schema, rundir

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Where frontier.md and frontier.png go.")
flags.DEFINE_list("runs", None, "Run directories or globs (each with config.json and "
                  "results.json); unfinished runs are skipped.")
flags.mark_flags_as_required(["workdir", "runs"])

RULE_ONLY = ("rule", "seed")  # keys that tell points apart besides the rule's own options


def load_runs(patterns: list[str]) -> list[dict]:
    """[{"dir", "config" (flat), "results"}] of every finished run matching `patterns`."""
    runs = []
    for pattern in patterns:
        for path in sorted(glob.glob(os.path.expanduser(pattern))):
            files = [os.path.join(path, n) for n in ("config.json", "results.json")]
            if not all(os.path.exists(f) for f in files):
                continue
            with open(files[0]) as f, open(files[1]) as g:
                runs.append({"dir": path, "config": json.load(f)["config"],
                             "results": json.load(g)})
    if not runs:
        raise FileNotFoundError(f"No finished run (config.json and results.json) in {patterns}.")
    return runs


def _key(config: dict, *, keep_rule: bool) -> str:
    """The run's config without its seed (and rule), and without keys its rule does not
    read: runs of one point (and a rule's backprop twin) share it."""
    # A key added since a run was saved holds the value that reproduces it (rundir).
    flat = {**rundir.ADDED_KEYS, **config_schema.flatten(config)}
    # The backprop twin's key: keys backprop does not read do not tell runs apart.
    unread = config_schema.unread(flat if keep_rule else {**flat, "rule": "bp"})
    drop = {"seed", "diagnostics.cosine", "diagnostics.test_curve", "log_every_steps",
            "checkpoint_every_epochs", "keep_checkpoints", "data.dir", "data.cache_dir"}
    if not keep_rule:
        drop |= {"rule"} | {k for k in flat if k.startswith("lra.")}
    return json.dumps({k: v for k, v in sorted(flat.items())
                       if k not in drop and k not in unread}, default=str)


def points(runs: list[dict]) -> list[dict]:
    """One row per (config minus seed): rule, wiring, hops, accuracies over seeds, and the
    backprop runs of the same data, model and schedule with the same seeds."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(_key(run["config"], keep_rule=True), []).append(run)
    bp = {}
    for run in runs:
        if run["config"]["rule"] == "bp":
            bp.setdefault(_key(run["config"], keep_rule=False), {})[
                run["config"]["seed"]] = run["results"]["test_accuracy"]
    rows = []
    for members in groups.values():
        config = ml_collections.ConfigDict(members[0]["config"])
        seeds = sorted(m["config"]["seed"] for m in members)
        tests = [100 * m["results"]["test_accuracy"] for m in members]
        twin = bp.get(_key(members[0]["config"], keep_rule=False), {})
        bp_tests = [100 * twin[s] for s in seeds if s in twin]
        rows.append({
            "rule": config.rule, "wiring": builder.describe_wiring(config),
            "hops": builder.target_hops(config), "seeds": seeds,
            "epochs": members[0]["results"]["epochs"],
            "test": statistics.mean(tests), "test_std": _std(tests),
            "bp": statistics.mean(bp_tests) if len(bp_tests) == len(seeds) else None,
            "dirs": [m["dir"] for m in members]})
    return sorted(rows, key=lambda r: (r["hops"], -r["test"]))


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def table(rows: list[dict]) -> str:
    lines = ["| rule | wiring | target hops | epochs | seeds | test (%) | backprop, same seeds "
             "(%) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        bp = "-" if r["bp"] is None else f"{r['bp']:.2f}"
        lines.append(f"| {r['rule']} | {r['wiring']} | {r['hops']} | {r['epochs']} | "
                     f"{','.join(map(str, r['seeds']))} | {r['test']:.2f} +- "
                     f"{r['test_std']:.2f} | {bp} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> None:
    import matplotlib  # noqa: PLC0415 - only plotting needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(8, 5))
    markers = "osD^vP*Xhp"  # points of equal hops and accuracy stay told apart
    for i, r in enumerate(rows):
        ax.errorbar(r["hops"], r["test"], yerr=r["test_std"], fmt=markers[i % len(markers)],
                    color=f"C{i % 10}", mfc="none", capsize=3,
                    label=f"{r['rule']}: {r['wiring']}")
    ax.set(xlabel="target hops (critical path of the sweep)", ylabel="test accuracy (%)",
           title="accuracy against target hops")
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv):
    del argv
    try:
        rows = points(load_runs(FLAGS.runs))
    except FileNotFoundError as e:
        raise SystemExit(f"error: {e}") from None
    out = os.path.expanduser(FLAGS.workdir)
    os.makedirs(out, exist_ok=True)
    text = table(rows)
    with open(os.path.join(out, "frontier.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "frontier.json"), "w") as f:
        json.dump(rows, f, indent=1)
    plot(rows, os.path.join(out, "frontier.png"))
    print(text, end="")
    print(os.path.join(out, "frontier.png"))


if __name__ == "__main__":
    shell.run_main(main)
