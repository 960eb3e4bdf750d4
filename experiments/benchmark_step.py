r"""Train-step time of every rule on one config, measured in one process.

  python -m experiments.benchmark_step --config=configs/fmnist_mlp.py \
      [--rules=rec_lra,bp,lra_e,fa,dfa] [--repeats=7] [--steps=200]

Each rule's jitted `train_steps` (the exact function the training loop runs: input noise,
deltas, re-projection, AdamW) is compiled, warmed up, then timed over `steps` fused steps;
rules are interleaved across `repeats` rounds and the median is reported, so the ratios
to backprop come from the same run on the same machine state.
"""

import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from rec_lra_jax import rules, train

FLAGS = flags.FLAGS
flags.DEFINE_list("rules", list(rules.RULES), "Rules to time.")
flags.DEFINE_integer("repeats", 7, "Interleaved timing rounds.")
flags.DEFINE_integer("steps", 200, "Train steps per timed call.")
flags.DEFINE_integer("input_dim", 784, "Flattened input size (synthetic data).")
flags.DEFINE_integer("num_classes", 10, "Classes (synthetic data).")
config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
flags.mark_flags_as_required(["config"])


def build_step(config, rule_name, images, labels):
    model = train.make_model(config.model, FLAGS.num_classes)
    rule = train.make_rule(rule_name, config.lra)
    tx = train.make_optimizer(config.optim, total_steps=10**6,
                              learn_feedback=rules.feedback_is_learned(rule_name,
                                                                       config.lra.feedback_rule))
    state = train.create_train_state(jax.random.key(0), model, rule, tx, (1, images.shape[1]))
    step = jax.jit(functools.partial(
        train.train_steps, model=model, rule=rule, tx=tx, key=jax.random.key(1),
        noise_std=config.input_noise, num_classes=FLAGS.num_classes))
    return step, state


def main(argv):
    del argv
    config = FLAGS.config
    rng = np.random.default_rng(0)
    n = FLAGS.steps * config.batch_size
    images = jnp.asarray(rng.uniform(size=(n, FLAGS.input_dim)).astype(np.float32))
    labels = jnp.asarray(rng.integers(0, FLAGS.num_classes, n).astype(np.int32))
    batches = jnp.arange(n).reshape(FLAGS.steps, config.batch_size)
    steps = {r: build_step(config, r, images, labels) for r in FLAGS.rules}
    for fn, state in steps.values():  # compile and warm up
        jax.block_until_ready(fn(state, images, labels, batches))
    times = {r: [] for r in FLAGS.rules}
    for _ in range(FLAGS.repeats):
        for r, (fn, state) in steps.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(state, images, labels, batches))
            times[r].append((time.perf_counter() - t0) / FLAGS.steps * 1e3)
    median = {r: statistics.median(t) for r, t in times.items()}
    hidden = "-".join(str(w) for w in config.model.hidden)
    print(f"\nTrain-step time, MLP {FLAGS.input_dim}-{hidden}-{FLAGS.num_classes}, batch "
          f"{config.batch_size}, {FLAGS.steps} fused steps x {FLAGS.repeats} rounds, "
          f"{jax.devices()[0].device_kind} ({jax.device_count()} device(s)), "
          f"jax {jax.__version__}\n")
    print("| rule | ms / step (median) | min | max | ratio to bp |")
    print("| --- | --- | --- | --- | --- |")
    for r in FLAGS.rules:
        ratio = f"{median[r] / median['bp']:.2f}" if "bp" in median else "n/a"
        print(f"| {r} | {median[r]:.3f} | {min(times[r]):.3f} | {max(times[r]):.3f} | {ratio} |")


if __name__ == "__main__":
    app.run(main)
