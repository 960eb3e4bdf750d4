r"""Per-tensor alignment of a trained run's local deltas to the backprop gradient.

  python -m experiments.alignment --config=configs/cifar10_resnet18.py:cpu --workdir=RUN \
      --config.data.dir=CIFAR_DIR --betas=0.5,0.05

Restores the newest checkpoint of RUN (a run of a local rule trained with this config),
takes the first --examples training examples (no augmentation), and prints one markdown
row per parameter tensor (conv kernels, BatchNorm scales and biases, the head): the cosine
of the rule's delta to backprop's gradient on that batch, for each beta of --betas (the
same weights, synapses and BatchNorm statistics; only the target nudge changes). The
training-time diagnostic (`diagnostics.cosine`) follows the kernels only; BatchNorm's
parameters see the part of each error its Jacobian removes from the kernel deltas (the
per-channel mean and the x_hat component), so they can disagree where kernels agree.
"""

import os

from absl import flags
from ml_collections import config_flags

from experiments import shell
from rec_lra_jax import builder, checkpoints, rules

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A finished or interrupted run of a local rule.")
flags.DEFINE_list("betas", [], "Target nudges to compare (default: the run's beta at its "
                  "checkpoint).")
flags.DEFINE_integer("examples", 256, "Training examples in the batch.")
config_flags.DEFINE_config_file("config", None, "The run's config file.", lock_config=False)
flags.mark_flags_as_required(["config", "workdir"])


def cosines(config, workdir: str, betas: list[float], examples: int
            ) -> tuple[list[float], dict[str, list[float]]]:
    """The betas and {parameter path: [cos(delta at beta, backprop gradient) per beta]}.

    No betas: the run's own beta at its checkpoint (a scheduled beta's value there)."""
    import jax  # noqa: PLC0415 - after flag parsing, like every entry point
    import jax.numpy as jnp  # noqa: PLC0415

    from rec_lra_jax import steps  # noqa: PLC0415

    if not rules.RULES[config.rule].local:
        raise builder.ConfigError(f"rule={config.rule!r} is an autodiff rule: its deltas are "
                                  f"gradients already; pass a run of a local rule.")
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):  # before orbax makes dirs
        raise checkpoints.CheckpointError(f"{workdir} holds no checkpoint.")
    data = builder.create_data(config)
    kwargs = dict(input_shape=data.image_shape, num_classes=data.num_classes,
                  total_steps=1, donate=False)
    setup = builder.create_setup(config, state_template=True, **kwargs)  # restored below
    backprop = builder.create_setup(config, rule="bp", **kwargs)
    ckpt = checkpoints.Checkpoints(workdir)
    restored = ckpt.restore_latest(setup.state)
    ckpt.close()
    if restored is None:
        raise checkpoints.CheckpointError(f"{workdir} holds no checkpoint.")
    state = restored[0]
    images, labels = next(data.train.eval_batches(examples))
    x = steps.normalize(jnp.asarray(images), data.normalization)
    onehot = jax.nn.one_hot(jnp.asarray(labels), data.num_classes)
    grads = steps.rule_deltas(backprop.model, backprop.rule, state.params, {},
                              state.batch_stats, x, onehot, autodiff=True)["params"]
    if not betas:
        hyperparams = getattr(rules.rule_state(state.opt_state), "hyperparams", {})
        betas = [float(hyperparams.get("beta", config.lra.beta))]
    out: dict[str, list[float]] = {}
    config.lra.beta_schedule = "constant"  # each beta as given, at every step
    for beta in betas:
        config.lra.beta = beta
        deltas = steps.rule_deltas(setup.model, builder.create_rule(config), state.params,
                                   state.feedback, state.batch_stats, x, onehot)["params"]
        for (path, d), g in zip(jax.tree_util.tree_leaves_with_path(deltas),
                                jax.tree.leaves(grads), strict=True):
            cos = jnp.vdot(d, g) / (jnp.linalg.norm(d) * jnp.linalg.norm(g) + 1e-30)
            out.setdefault(jax.tree_util.keystr(path), []).append(float(cos))
    return betas, out


def main(argv):
    del argv
    config = FLAGS.config
    builder.validate(config, overridden=shell.overridden())
    betas, table = cosines(config, FLAGS.workdir, [float(b) for b in FLAGS.betas],
                           FLAGS.examples)
    print("| parameter | " + " | ".join(f"cos, beta {b:g}" for b in betas) + " |")
    print("| --- |" + " --- |" * len(betas))
    for name, values in table.items():
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")


if __name__ == "__main__":
    shell.run_main(main)
