r"""Train-step time and XLA memory of every rule on one config, measured in one process.

  python -m experiments.benchmark_step --config=configs/fmnist_mlp.py \
      [--rules=rec_lra,bp,lra_e,fa,dfa] [--repeats=7] [--steps=200]
  python -m experiments.benchmark_step --config=configs/cifar10_resnet18.py \
      --rules=rec_lra,bp --image_shape=32,32,3 --steps=1 --repeats=5 --config.batch_size=32

Each rule's jitted `train_steps` (the exact function the training loop runs: input noise,
deltas, re-projection, AdamW) is compiled, warmed up, then timed over `steps` fused steps;
rules are interleaved across `repeats` rounds and the median is reported, so the ratios
to backprop come from the same run on the same machine state. Memory is XLA's own account
of the compiled step (`memory_analysis()`): the temporary buffers it needs at its peak,
plus arguments and outputs; it is exact for the compiled program, not a sampled RSS.
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
flags.DEFINE_integer("input_dim", 784, "Flattened input size for MLPs (synthetic data).")
flags.DEFINE_list("image_shape", ["28", "28", "1"], "H,W,C of the images for ResNets.")
flags.DEFINE_integer("num_classes", 10, "Classes (synthetic data).")
config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
flags.mark_flags_as_required(["config"])


def build_step(config, rule_name, images, labels, batches):
    model = train.make_model(config.model, FLAGS.num_classes, rule_name)
    rule = train.make_rule(rule_name, config.lra, config.model.name)
    tx = train.make_optimizer(config.optim, total_steps=10**6,
                              learn_feedback=rules.feedback_is_learned(rule_name,
                                                                       config.lra.feedback_rule))
    state = train.create_train_state(jax.random.key(0), model, rule, tx,
                                     (1, *images.shape[1:]))
    step = jax.jit(functools.partial(
        train.train_steps, model=model, rule=rule, tx=tx, key=jax.random.key(1),
        noise_std=config.input_noise, num_classes=FLAGS.num_classes,
        augment=config.get("augment", "none")))
    memory = step.lower(state, images, labels, batches).compile().memory_analysis()
    return step, state, memory


def _mib(memory, *fields) -> float:
    if memory is None:
        return float("nan")
    return sum(getattr(memory, f, 0) for f in fields) / 2**20


def main(argv):
    del argv
    config = FLAGS.config
    rng = np.random.default_rng(0)
    n = FLAGS.steps * config.batch_size
    shape = ((FLAGS.input_dim,) if config.model.name == "mlp"
             else tuple(int(d) for d in FLAGS.image_shape))
    images = jnp.asarray(rng.uniform(size=(n, *shape)).astype(np.float32))
    labels = jnp.asarray(rng.integers(0, FLAGS.num_classes, n).astype(np.int32))
    batches = jnp.arange(n).reshape(FLAGS.steps, config.batch_size)
    steps = {r: build_step(config, r, images, labels, batches) for r in FLAGS.rules}
    for fn, state, _ in steps.values():  # warm up
        jax.block_until_ready(fn(state, images, labels, batches))
    times = {r: [] for r in FLAGS.rules}
    for _ in range(FLAGS.repeats):
        for r, (fn, state, _) in steps.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(state, images, labels, batches))
            times[r].append((time.perf_counter() - t0) / FLAGS.steps * 1e3)
    median = {r: statistics.median(t) for r, t in times.items()}
    if config.model.name == "mlp":
        hidden = "-".join(str(w) for w in config.model.hidden)
        name = f"MLP {FLAGS.input_dim}-{hidden}-{FLAGS.num_classes}"
    else:
        m = config.model
        name = f"ResNet-{m.depth} width {m.width} {m.stem} stem, {'x'.join(map(str, shape))}"
    print(f"\nTrain-step time, {name}, batch {config.batch_size}, {FLAGS.steps} fused steps x "
          f"{FLAGS.repeats} rounds, {jax.devices()[0].device_kind} ({jax.device_count()} "
          f"device(s)), jax {jax.__version__}\n")
    print("| rule | ms / step (median) | min | max | time ratio to bp | XLA temp MiB | "
          "args+out MiB | memory ratio to bp |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    total = {r: _mib(m, "temp_size_in_bytes", "argument_size_in_bytes",
                     "output_size_in_bytes") for r, (_, _, m) in steps.items()}
    for r in FLAGS.rules:
        ratio = f"{median[r] / median['bp']:.2f}" if "bp" in median else "n/a"
        mem = steps[r][2]
        mratio = f"{total[r] / total['bp']:.2f}" if "bp" in total else "n/a"
        print(f"| {r} | {median[r]:.3f} | {min(times[r]):.3f} | {max(times[r]):.3f} | {ratio} | "
              f"{_mib(mem, 'temp_size_in_bytes'):.1f} | "
              f"{_mib(mem, 'argument_size_in_bytes', 'output_size_in_bytes'):.1f} | "
              f"{mratio} |")


if __name__ == "__main__":
    app.run(main)
