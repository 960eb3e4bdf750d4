r"""PNG plots of a run or a comparison: curves, per-layer alignment to backprop, time.

  python -m experiments.plot --workdir=DIR

DIR is a run's workdir (it has metrics.jsonl) or a comparison's (one such workdir per
rule, as `experiments.compare` writes them). Writes into DIR/plots/:
- curves.png: validation accuracy per epoch of every rule (test accuracy per epoch too when
  the runs logged it, `--config.diagnostics.test_curve=True`; the final test accuracy is
  marked either way) and the training loss;
- cosine.png: per-layer cosine between each rule's weight deltas and the backprop gradient
  over training, and below it the ratio of their norms (where the runs logged it), for
  runs with `--config.diagnostics.cosine=True`;
- time.png: training seconds per epoch of each rule (from results.json).
`experiments.compare` and `make demo` call it at the end.
"""

import json
import os

from absl import flags

from experiments import shell

FLAGS = flags.FLAGS


def _read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def find_runs(workdir: str) -> dict[str, str]:
    """{name: run dir}: workdir itself, or its subdirectories with a metrics.jsonl."""
    if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        return {os.path.basename(os.path.normpath(workdir)): workdir}
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"--workdir={workdir} does not exist.")
    runs = {name: os.path.join(workdir, name) for name in sorted(os.listdir(workdir))
            if os.path.exists(os.path.join(workdir, name, "metrics.jsonl"))}
    if not runs:
        raise FileNotFoundError(f"No metrics.jsonl in {workdir} or its subdirectories: "
                                "plot a run's or a comparison's workdir.")
    return runs


def plot(workdir: str) -> list[str]:
    """Writes the PNGs for `workdir` (see the module docstring); returns their paths."""
    import matplotlib  # noqa: PLC0415 - only plotting needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    runs = find_runs(workdir)
    records = {n: _read_jsonl(os.path.join(d, "metrics.jsonl")) for n, d in runs.items()}
    results = {}
    for name, d in runs.items():
        path = os.path.join(d, "results.json")
        if os.path.exists(path):
            with open(path) as f:
                results[name] = json.load(f)
    out_dir = os.path.join(workdir, "plots")
    os.makedirs(out_dir, exist_ok=True)
    written = []

    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, recs) in enumerate(records.items()):
        color = f"C{i}"
        epochs = [r["epoch"] for r in recs]
        acc_ax.plot(epochs, [100 * r["val_accuracy"] for r in recs], color=color,
                    label=f"{name} val")
        if any("test_accuracy" in r for r in recs):
            test = [(r["epoch"], 100 * r["test_accuracy"]) for r in recs if "test_accuracy" in r]
            acc_ax.plot(*zip(*test, strict=True), color=color, linestyle="--",
                        label=f"{name} test")
        if name in results and epochs:
            acc_ax.scatter([epochs[-1]], [100 * results[name]["test_accuracy"]], color=color,
                           marker="*", s=80, zorder=3)
        loss_ax.plot(epochs, [r["train_loss"] for r in recs], color=color, label=name)
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)",
               title="validation (solid), test (dashed; * final)")
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="training loss")
    acc_ax.legend(fontsize=7)
    loss_ax.legend(fontsize=7)
    written.append(_save(fig, out_dir, "curves.png"))

    cosine = {n: recs for n, recs in records.items()
              if any(k.startswith("cosine/") for r in recs for k in r)}
    if cosine:
        ratios = any(k.startswith("norm_ratio/") for recs in cosine.values()
                     for r in recs for k in r)
        fig, axes = plt.subplots(1 + ratios, len(cosine), figsize=(5 * len(cosine),
                                 4 * (1 + ratios)), squeeze=False)
        for col, (name, recs) in enumerate(cosine.items()):
            _layer_curves(axes[0][col], recs, "cosine/")
            axes[0][col].set(xlabel="epoch", ylabel="cosine to the backprop gradient",
                             title=name, ylim=(-1.05, 1.05))
            if ratios:
                values = _layer_curves(axes[1][col], recs, "norm_ratio/")
                positive = [v for v in values if v > 0]
                wide = bool(positive) and max(positive) > 10 * min(positive)
                axes[1][col].set(xlabel="epoch", ylabel="||delta|| / ||backprop gradient||",
                                 title=name, yscale="log" if wide else "linear")
        written.append(_save(fig, out_dir, "cosine.png"))

    if results:
        fig, ax = plt.subplots(figsize=(1.2 * len(results) + 2, 3.5))
        names = list(results)
        seconds = [results[n]["train_seconds"] / max(results[n]["epochs"], 1) for n in names]
        ax.bar(names, seconds, color=[f"C{list(records).index(n)}" for n in names])
        ax.set(ylabel="training seconds per epoch", title="time per epoch")
        written.append(_save(fig, out_dir, "time.png"))
    return written


def _layer_curves(ax, records: list[dict], prefix: str) -> list[float]:
    """One line per layer of the `prefix` keys (epoch on x); returns the values drawn."""
    layers = sorted({k for r in records for k in r if k.startswith(prefix)})
    values = []
    for j, key in enumerate(layers):
        points = [(r["epoch"], r[key]) for r in records if key in r]
        ax.plot(*zip(*points, strict=True), color=f"C{j % 10}", label=key.removeprefix(prefix))
        values += [v for _, v in points]
    if layers:
        ax.legend(fontsize=6, ncol=2)
    return values


def _save(fig, out_dir: str, name: str) -> str:
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    fig.clf()
    return path


def main(argv):
    del argv
    try:
        paths = plot(os.path.expanduser(FLAGS.workdir))
    except FileNotFoundError as e:
        raise SystemExit(f"error: {e}") from None
    for path in paths:
        print(path)


if __name__ == "__main__":  # flags only here: compare imports plot() and has its --workdir
    flags.DEFINE_string("workdir", None, "A run's or a comparison's workdir.")
    flags.mark_flags_as_required(["workdir"])
    shell.run_main(main)
