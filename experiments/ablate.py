r"""One-factor-at-a-time ablations, selected on the validation split only.

  python -m experiments.ablate --config=configs/fmnist_mlp.py --workdir=DIR \
      --vary="lra.beta=0.05,0.2;lra.gamma=0.5,2.0;model.activation=relu,gelu" \
      [--config.num_epochs=20] [--seeds=0]

Runs the config as given (the "base" row), then each value of each varied key with every
other key at the base value, each seed in its own workdir (`train.train_and_evaluate`: an
interrupted run resumes, a finished one is not re-run, a changed config is refused). The
table (stdout, DIR/ablation.md, DIR/ablation.json) lists, per setting, the mean best
validation accuracy over the seeds, which alone ranks the settings, and the test accuracy
of the same runs, reported but never used to choose. Values are parsed as Python literals
where they can be (0.1, True, (256, 256)), else taken as strings.
"""

import ast
import json
import os
import statistics

from absl import flags
from ml_collections import config_flags

from experiments import shell
from rec_lra_jax import builder, config_schema, train
from rec_lra_jax.config_schema import ConfigError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Parent directory; each setting trains in a subdirectory.")
flags.DEFINE_string("vary", "", "key=v1,v2;key2=v3,... (one factor at a time).")
flags.DEFINE_list("seeds", ["0"], "Seeds per setting.")
config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def parse_vary(text: str) -> list[tuple[str, object]]:
    """"a=1,2;b=x" -> [("a", 1), ("a", 2), ("b", "x")]."""
    settings = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, _, values = part.partition("=")
        if not values:
            raise ValueError(f"--vary part {part!r} has no values: write key=v1,v2.")
        for raw in _split_values(values):
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw
            settings.append((key.strip(), value))
    return settings


def _split_values(values: str) -> list[str]:
    """Splits on commas outside parentheses, so tuples stay whole."""
    out, depth, current = [], 0, ""
    for ch in values:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(current.strip())
            current = ""
        else:
            current += ch
    return [*out, current.strip()] if current.strip() else out


def _set(config, key: str, value) -> None:
    try:
        config_schema.set_key(config, key, value)
    except ConfigError as e:
        raise ConfigError(f"--vary: {e}") from None


def main(argv):
    del argv
    settings = [("base", None), *parse_vary(FLAGS.vary)]
    overridden = set(shell.overridden()) | {k for k, _ in settings if k != "base"}
    workdir = builder.expand(FLAGS.workdir)
    plan = []  # every config is built and validated before anything trains
    for key, value in settings:
        name = "base" if key == "base" else f"{key}={value}"
        configs = []
        for seed in map(int, FLAGS.seeds):
            config = FLAGS.config.copy_and_resolve_references()
            with config.unlocked():
                if key != "base":
                    _set(config, key, value)
                config.seed = seed
            builder.validate(config, overridden=overridden)
            configs.append(config)
        plan.append((name, configs))
    rows = []
    for name, configs in plan:
        runs = []
        for config in configs:
            run_dir = os.path.join(workdir, name.replace("/", "_"), f"seed{config.seed}")
            print(f"=== {name}, seed {config.seed} ===", flush=True)
            runs.append(train.train_and_evaluate(config, run_dir, overridden=overridden))
        vals = [r["best_val_accuracy"] for r in runs]
        tests = [r["test_accuracy"] for r in runs]
        rows.append({"setting": name, "seeds": [r["seed"] for r in runs],
                     "val_mean": statistics.mean(vals),
                     "val_std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                     "test_mean": statistics.mean(tests),
                     "test_std": statistics.stdev(tests) if len(tests) > 1 else 0.0})
    best = max(rows, key=lambda r: r["val_mean"])
    lines = ["| setting | best val (%) | test (%) |", "| --- | --- | --- |"]
    for r in rows:
        mark = " **(chosen on val)**" if r is best else ""
        lines.append(f"| {r['setting']}{mark} | {100 * r['val_mean']:.2f} +- "
                     f"{100 * r['val_std']:.2f} | {100 * r['test_mean']:.2f} +- "
                     f"{100 * r['test_std']:.2f} |")
    table = "\n".join(lines)
    print(f"\nseeds {FLAGS.seeds}\n\n{table}\n", flush=True)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "ablation.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(workdir, "ablation.json"), "w") as f:
        json.dump({"rows": rows, "chosen": best["setting"]}, f, indent=2)


if __name__ == "__main__":
    shell.run_main(main)
