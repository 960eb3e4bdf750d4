r"""Train-step time and XLA memory of every rule on one config, measured in one process.

  python -m experiments.benchmark_step --config=configs/fmnist_mlp.py \
      [--rules=rec_lra,bp,lra_e,fa,dfa] [--repeats=7] [--steps=200]
  python -m experiments.benchmark_step --config=configs/cifar10_resnet18.py \
      --rules=rec_lra,bp --steps=1 --repeats=5 --config.batch_size=32
  python -m experiments.benchmark_step --config=configs/resnet50.py --rules=rec_lra,bp \
      --steps=1 --notime --config.batch_size=64 --config.lra.weight_mirror=0   # memory only
  XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m experiments.benchmark_step \
      --config=configs/resnet50.py --rules=rec_lra,rec_lra+layer4,bp,bp+layer4 --steps=1 \
      --notime --config.batch_size=64 --config.lra.weight_mirror=0   # per device, 1 x 4 mesh

Without --rules it times every rule the config's model family supports. Each rule's
jitted train step is built by `builder.create_setup`, exactly as the training loop builds
it (input noise, deltas, re-projection, AdamW, the non-finite check), compiled, warmed up,
then timed over `steps` fused steps on random data of the dataset's image shape; rules are
interleaved across `repeats` rounds and the median is reported, so the ratios to backprop
come from the same run on the same machine state. Memory is XLA's own account of the
compiled step (`memory_analysis()`): the temporary buffers it needs at its peak, plus
arguments and outputs; it is exact for the compiled program, not a sampled RSS. A last
table gives XLA's static cost of a step (`cost_analysis()`: flops, bytes accessed, and the
count of fused kernels), ratios free of timing noise.
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from ml_collections import config_flags

from experiments import shell
from rec_lra_jax import builder, config_schema, sources, steps
from rec_lra_jax import rules as rules_lib
from rec_lra_jax.config_schema import ConfigError

FLAGS = flags.FLAGS
flags.DEFINE_list("rules", [], "Rules to time; default: every rule of the model family. "
                  "A local rule may carry options as suffixes, each a row of its own: "
                  "RULE+grouped (--config.lra.grouped=True), RULE+shared "
                  "(--config.optim.share_moments=True with lra.gamma 1), e.g. "
                  "rec_lra+grouped+shared. Any rule: RULE+layerN, the step on a 1 x N "
                  "('data', 'layer') mesh (--config.mesh.layer=N; memory per device).")
VARIANTS = {"grouped": {"lra.grouped": True},
            "shared": {"optim.share_moments": True, "lra.gamma": 1.0,
                       "lra.gamma_schedule": "constant"}}
flags.DEFINE_integer("repeats", 7, "Interleaved timing rounds.")
flags.DEFINE_integer("steps", 200, "Train steps per timed call.")
flags.DEFINE_bool("time", True, "Time the steps; --notime only compiles each rule's step and "
                  "prints XLA's memory account (no step runs: big models on a small host).")
config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
flags.mark_flags_as_required(["config"])


def split_rule(row: str) -> tuple[str, dict]:
    """"rec_lra+grouped+shared" -> ("rec_lra", the config overrides of its suffixes)."""
    rule, *suffixes = row.split("+")
    overrides = {}
    for suffix in suffixes:
        if suffix.startswith("layer") and suffix[5:].isdigit() and int(suffix[5:]) > 1:
            overrides.update({"mesh.data": 1, "mesh.layer": int(suffix[5:])})
            continue
        if suffix not in VARIANTS:
            raise ConfigError(f"--rules: unknown suffix +{suffix} in {row!r}; choose from "
                              f"{', '.join('+' + v for v in VARIANTS)}, +layerN (N > 1).")
        overrides.update(VARIANTS[suffix])
    if set(overrides) - {"mesh.data", "mesh.layer"} and not rules_lib.RULES[rule].local:
        raise ConfigError(f"--rules: {row}: only local rules take these options (autodiff "
                          f"rules take one gradient).")
    return rule, overrides


def build_step(config, row, data, batches, info):
    rule, overrides = split_rule(row)
    if overrides:
        config = config.copy_and_resolve_references()
        with config.unlocked():
            for key, value in overrides.items():
                config_schema.set_key(config, key, value)
        builder.validate(config, rules_run=[rule])
    layer = config.mesh.get("layer", 1)
    try:
        sharding = (steps.data_mesh_sharding(config.batch_size, config.mesh.data, layer)
                    if layer > 1 else None)
    except ValueError as e:
        raise ConfigError(f"--rules: {row}: {e} (on a CPU: XLA_FLAGS="
                          f"--xla_force_host_platform_device_count={layer})") from None
    setup = builder.create_setup(config, input_shape=data[0].shape[1:],
                                 num_classes=info.num_classes, total_steps=10**6, rule=rule,
                                 normalization=info.normalization, donate=False,
                                 sharding=sharding)
    state = setup.state
    if sharding is not None:
        state = jax.device_put(state, steps.state_shardings(state, sharding))
    compiled = setup.train_fn.lower(state, data, batches).compile()
    # The compiled program itself runs the timed steps (calling the jitted function would
    # compile it a second time).
    return compiled, state, compiled.memory_analysis(), static_cost(compiled)


def static_cost(compiled) -> dict[str, float]:
    """XLA's static estimate of a compiled call: floating-point operations and bytes
    accessed (a fused loop's body counted once, so about one train step; per device on a
    mesh: a +layerN row's program is one device's share), and the number of
    fused kernels in its program (each a launch: on a CPU their fixed cost is what small
    steps pay)."""
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, list | tuple) else cost) or {}
    return {"flops": float(cost.get("flops", float("nan"))),
            "bytes": float(cost.get("bytes accessed", float("nan"))),
            "fusions": compiled.as_text().count(" fusion(")}


def _device_bytes(x) -> int:
    """Bytes of `x` on one device (a split array's shard, else the whole)."""
    sharding = getattr(x, "sharding", None)
    shape = sharding.shard_shape(x.shape) if sharding is not None else x.shape
    return int(np.prod(shape)) * x.dtype.itemsize


def state_bytes(state) -> dict[str, int]:
    """Where a train state's bytes go, on one device: forward parameters (with BatchNorm
    statistics), error synapses, and the optimizer state of each (AdamW keeps two moments
    per entry)."""
    out = {"params": 0, "synapses": 0, "opt params": 0, "opt synapses": 0}
    for key, tree in (("params", (state.params, state.batch_stats)),
                      ("synapses", state.feedback)):
        out[key] = sum(_device_bytes(x) for x in jax.tree.leaves(tree))
    for path, x in jax.tree_util.tree_leaves_with_path(state.opt_state):
        if not hasattr(x, "dtype"):
            continue
        side = "synapses" if any(getattr(k, "key", None) == "feedback" for k in path) else \
            "params"
        out[f"opt {side}"] += _device_bytes(x)
    return out


def _mib(memory, *fields) -> float:
    if memory is None:
        return float("nan")
    return sum(getattr(memory, f, 0) for f in fields) / 2**20


def main(argv):
    del argv
    config = FLAGS.config
    rules = FLAGS.rules or list(builder.rules_for(config))
    unknown = [r for r in rules if r.split("+")[0] not in rules_lib.RULES]
    plain = list(dict.fromkeys(r.split("+")[0] for r in rules))
    if unknown:
        raise ConfigError(f"--rules: unknown rule(s) {', '.join(unknown)}; choose from "
                          f"{', '.join(builder.rules_for(config))}.")
    builder.validate(config, rules_run=plain, overridden=shell.overridden())
    for r in rules:
        split_rule(r)
    info = sources.DATASETS[config.dataset]
    shape = info.image_shape
    if info.streaming and config.data.image_size:
        shape = (config.data.image_size, config.data.image_size, 3)
    rng = np.random.default_rng(0)
    n = FLAGS.steps * config.batch_size
    data = (jnp.asarray(rng.integers(0, 256, (n, *shape), dtype=np.uint8)),
            jnp.asarray(rng.integers(0, info.num_classes, n).astype(np.int32)))
    batches = jnp.arange(n, dtype=jnp.int32).reshape(FLAGS.steps, config.batch_size)
    built = {r: build_step(config, r, data, batches, info) for r in rules}
    model = builder.describe_model(config, shape, info.num_classes)
    if not FLAGS.time:
        print(f"\nXLA's memory account of the compiled train step (not run), {model} on "
              f"{'x'.join(map(str, shape))} inputs, batch {config.batch_size}, "
              f"{jax.devices()[0].device_kind}, jax {jax.__version__}")
        memory_table(built)
        cost_table(built)
        return
    for fn, state, *_ in built.values():  # warm up
        jax.block_until_ready(fn(state, data, batches))
    times = {r: [] for r in rules}
    for _ in range(FLAGS.repeats):
        for r, (fn, state, *_) in built.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(state, data, batches))
            times[r].append((time.perf_counter() - t0) / FLAGS.steps * 1e3)
    median = {r: statistics.median(t) for r, t in times.items()}
    print(f"\nTrain-step time, {model} on {'x'.join(map(str, shape))} inputs, batch "
          f"{config.batch_size}, {FLAGS.steps} fused steps x {FLAGS.repeats} rounds, "
          f"{jax.devices()[0].device_kind} ({jax.device_count()} device(s)), "
          f"jax {jax.__version__}\n")
    print("| rule | ms / step (median) | min | max | time ratio to bp | XLA temp MiB | "
          "args+out MiB | memory ratio to bp |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    total = {r: _mib(m, "temp_size_in_bytes", "argument_size_in_bytes",
                     "output_size_in_bytes") for r, (_, _, m, _) in built.items()}
    for r in rules:
        ratio = f"{median[r] / median['bp']:.2f}" if "bp" in median else "n/a"
        mem = built[r][2]
        mratio = f"{total[r] / total['bp']:.2f}" if "bp" in total else "n/a"
        print(f"| {r} | {median[r]:.3f} | {min(times[r]):.3f} | {max(times[r]):.3f} | {ratio} | "
              f"{_mib(mem, 'temp_size_in_bytes'):.1f} | "
              f"{_mib(mem, 'argument_size_in_bytes', 'output_size_in_bytes'):.1f} | "
              f"{mratio} |")
    memory_table(built)
    cost_table(built)


def cost_table(built: dict) -> None:
    """XLA's static cost of each rule's step (`static_cost`), and its ratio to bp's."""
    print("\nXLA's static cost of one step (cost analysis of the compiled program; no "
          "timing noise):\n")
    print("| rule | GFLOP | flops ratio to bp | MB accessed | bytes ratio to bp | fused "
          "kernels | kernels ratio to bp |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    costs = {r: b[3] for r, b in built.items()}
    for r, c in costs.items():
        ratio = {k: f"{c[k] / costs['bp'][k]:.2f}" if "bp" in costs else "n/a" for k in c}
        print(f"| {r} | {c['flops'] / 1e9:.4g} | {ratio['flops']} | {c['bytes'] / 1e6:.1f} | "
              f"{ratio['bytes']} | {c['fusions']} | {ratio['fusions']} |")


def memory_table(built: dict) -> None:
    """Where each rule's memory goes: the train state by part, and XLA's temporaries."""
    print("\nWhere the state's memory goes (MiB on one device; optimizer state split by what "
          "it updates):\n")
    print("| rule | params + BN stats | synapses | optimizer state of params | optimizer "
          "state of synapses | XLA temp | total (state + temp) | ratio to bp |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    totals = {r: sum(state_bytes(state).values()) / 2**20 + _mib(mem, "temp_size_in_bytes")
              for r, (_, state, mem, _) in built.items()}
    for r, (_, state, mem, _) in built.items():
        parts = {k: v / 2**20 for k, v in state_bytes(state).items()}
        temp = _mib(mem, "temp_size_in_bytes")
        ratio = f"{totals[r] / totals['bp']:.2f}" if "bp" in totals else "n/a"
        print(f"| {r} | {parts['params']:.1f} | {parts['synapses']:.1f} | "
              f"{parts['opt params']:.1f} | {parts['opt synapses']:.1f} | {temp:.1f} | "
              f"{totals[r]:.1f} | {ratio} |")


if __name__ == "__main__":
    shell.run_main(main)
