"""Turns a config into a run: the only code below `experiments/` that reads a ConfigDict.

  validate(config, rules=..., overridden=...)   a ConfigError listing every problem
  create_data(config, shard=...)                the train / val / test batch sources
  create_model(config, num_classes, rule)       the flax module
  create_rule(config, rule)                     the update rule
  create_optimizer(config, total_steps, rule)   the optax chain
  create_feedback(config, rule)                 the rule's error-synapse initialiser
  create_train_state(key, model, tx, input_shape, init_feedback)
  create_setup(config, ...)                     all of these plus the jitted steps

Every entry point (training, compare, certify, benchmark) and the tests build through
these functions, so a step is built one way only.
"""

import functools
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from rec_lra_jax import (
    config_schema,
    diagnostics,
    local,
    models,
    resnet,
    rules,
    sources,
    steps,
    transforms,
)
from rec_lra_jax import wiring as wiring_lib
from rec_lra_jax.config_schema import ConfigError
from rec_lra_jax.wiring import Wiring

RULES = tuple(rules.RULES)


def rules_for(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The rules that can train config's model family."""
    return config_schema.FAMILY_RULES[config.model.name]


def validate(config: ml_collections.ConfigDict, *, rules_run=None, overridden=()) -> None:
    """Raises ConfigError naming every key out of range or without effect (see config_schema).

    Args:
      rules_run: the rules this config will train (default: config.rule); `compare` passes
        all of its rules, so rule options read by any of them are valid.
      overridden: keys set on the command line; only these are checked for having no
        effect under the chosen rule, source or option.
    """
    flat = config_schema.flatten(config.to_dict())
    problems = config_schema.check(flat, rules_run=rules_run, overridden=set(overridden))
    if not problems and flat.get("lra.local_loss_distill_each") and "rec_lra" in (
            rules_run or (config.rule,)):
        try:  # the count of readouts is the graph's: build its shapes (no data, no compute)
            create_graph(config, "rec_lra")
        except ValueError as e:
            problems.append(f"lra.local_loss_distill_each: {e}")
    if problems:
        raise ConfigError("Invalid config:\n  - " + "\n  - ".join(problems))


def create_data(config: ml_collections.ConfigDict, shard=(0, 1)) -> sources.Data:
    """The dataset's train / val / test sources (`sources.create_data`) from config.data."""
    d = config.data
    return sources.create_data(
        config.dataset, source=d.source, data_dir=expand(d.dir), download=d.download,
        tfds_data_dir=expand(d.tfds_data_dir), val_size=d.val_size, threads=d.threads,
        processes=d.processes,
        cache_dir=expand(d.cache_dir), image_size=d.image_size, seed=config.seed,
        synthetic_size=d.synthetic_size, shard=shard)


def expand(path: str) -> str:
    """A user path with ~ and $VARS expanded ("" stays "")."""
    return os.path.expandvars(os.path.expanduser(path)) if path else ""


def create_model(config: ml_collections.ConfigDict, num_classes: int, rule: str | None = None):
    """The model named by config.model ("mlp" or "resnet"), built for `rule` (the autodiff
    baselines get the model variant whose layers send back what the rule needs)."""
    m, rule = config.model, rule or config.rule
    if rule not in rules.RULES:
        raise ConfigError(f"Unknown rule {rule!r}; choose one of {tuple(rules.RULES)}.")
    backward = rules.RULES[rule].backward
    # float32 is the default computation (None: the inputs' dtype, bit for bit as before)
    dtype = None if config.get("dtype", "float32") == "float32" else jnp.dtype(config.dtype)
    if m.name == "mlp":
        return models.MLP(features=(*m.hidden, num_classes), activation=m.activation,
                          residual_gap=m.residual_gap, init_scheme=m.init, backward=backward,
                          feedback_init=config.lra.baseline_feedback_init, dtype=dtype)
    return resnet.resnet(m.depth, num_classes=num_classes, width=m.width, stem=m.stem,
                         use_bn=m.use_bn, bn_affine=m.bn_affine, init_scheme=m.init,
                         init_scale=m.init_scale, backward=backward, dtype=dtype,
                         branch_gradient=m.get("branch_gradient", True))


def create_rule(config: ml_collections.ConfigDict, rule: str | None = None, *,
                total_steps: int | None = None) -> rules.Rule:
    """The update rule `rule` (default config.rule) with the options in config.lra.

    `total_steps` is the horizon of a scheduled beta or gamma (`lra.beta_schedule`,
    `lra.gamma_schedule`: `optax.inject_hyperparams` over the rule's other options); without
    it the rule holds their start values."""
    rule, lra, family = rule or config.rule, config.lra, config.model.name
    if rule not in rules_for(config):
        raise ConfigError(f"rule={rule!r} is unknown for {family} models; choose one "
                          f"of {rules_for(config)}.")
    spec = rules.RULES[rule]
    if not spec.local:
        return spec.factory()
    activation = config.model.activation if family == "mlp" else None
    if rule == "dfa":
        return rules.dfa(skip_source="dense", activation=activation,
                         bn_error=lra.get("bn_error", "jacobian"),
                         grouped=lra.get("grouped", False))
    options = dict(error_unit=lra.error_unit,
                   alpha_skip=lra.alpha_skip, alpha_adjacent=lra.alpha_adjacent,
                   dx=lra.dx, activation=activation, grouped=lra.get("grouped", False),
                   bn_error=lra.get("bn_error", "jacobian"),
                   output_error_unit=None if lra.output_error_unit == "same"
                   else lra.output_error_unit)
    if rule == "kp":
        factory = rules.kolen_pollack
    elif rule == "lra_e":
        factory = rules.lra_e
        options.update(feedback_rule=lra.feedback_rule, rescale=lra.rescale)
    else:
        factory = rules.rec_lra
        options.update(feedback_rule=lra.feedback_rule, rescale=lra.rescale,
                       wiring=create_wiring(config, rule))
    kinds = (lra.get("beta_schedule", "constant"), lra.get("gamma_schedule", "constant"))
    if total_steps is None or kinds == ("constant", "constant"):
        return factory(beta=lra.beta, gamma=lra.gamma, **options)
    def inner(beta, gamma):  # only beta and gamma live in the state (checkpoints' layout)
        return factory(beta=beta, gamma=gamma, **options)

    return optax.inject_hyperparams(inner)(
        beta=rules.schedule(kinds[0], lra.beta, lra.beta_final, total_steps),
        gamma=rules.schedule(kinds[1], lra.gamma, lra.gamma_final, total_steps))


def create_feedback(config: ml_collections.ConfigDict, rule: str | None = None, *,
                    weight_mirror: bool = True):
    """`init(key, signals, params)` of rule's error synapses (config.lra's init, scale and
    weight mirror), or None for the autodiff rules, whose fixed feedback kernels are the
    model's "feedback" collection. `weight_mirror=False` skips the mirror (for a state
    that is only a restore template: the same shapes, minutes less at ImageNet scale)."""
    rule, lra = rule or config.rule, config.lra
    if rules.RULES[rule].autodiff:
        return None
    wiring = create_wiring(config, rule)
    options = dict(activation=config.model.activation if config.model.name == "mlp" else None,
                   feedback_init=lra.baseline_feedback_init if rule == "dfa"
                   else lra.feedback_init, feedback_scale=lra.feedback_scale)
    if weight_mirror and rule in ("rec_lra", "kp"):
        options["weight_mirror"] = lra.get("weight_mirror", 0.0)
    return functools.partial(wiring.init, **options)


def create_wiring(config: ml_collections.ConfigDict, rule: str | None = None) -> Wiring:
    """The wiring whose sweep `rule` (default config.rule) runs: rec_lra's from config.lra;
    LRA-E's adjacent chain; DFA's direct skips; the Kolen-Pollack chain for kp, which is
    also backprop's path (so bp, fa and sign_symmetry report its hops)."""
    rule, lra = rule or config.rule, config.lra
    readouts = lra.get("local_loss", "none") != "none"  # the output's share needs them
    if rule == "rec_lra":
        return Wiring("recursive", module_size=lra.get("module_size", 2), depth=lra.depth,
                      skip_source=lra.get("skip_source", "dense"),
                      head_last=lra.get("head_last", True), module=lra.get("module", "block"),
                      chain=lra.get("chain", "full"),
                      module_stages=lra.get("module_stages", 1),
                      stem_module=lra.get("stem_module", False),
                      inner_loss=lra.get("inner_loss", False),
                      local_loss=lra.get("local_loss", "none"),
                      local_loss_grid=lra.get("local_loss_grid", 1),
                      local_loss_hidden=lra.get("local_loss_hidden", 0),
                      local_loss_conv=lra.get("local_loss_conv", 0),
                      local_loss_recon=lra.get("local_loss_recon", 0.0),
                      local_loss_sim=lra.get("local_loss_sim", 0.0),
                      local_loss_distill=readouts * lra.get("local_loss_distill", 0.0),
                      local_loss_distill_each=tuple(
                          lra.get("local_loss_distill_each", ()) if readouts else ()),
                      skip_learning=lra.get("skip_learning", "kp"),
                      skip_activity=lra.get("skip_activity", False))
    if rule == "lra_e":
        return Wiring("adjacent")
    if rule == "dfa":
        return Wiring("direct", skip_source="dense", head_last=False)
    return Wiring("transpose")


def describe_wiring(config: ml_collections.ConfigDict, rule: str | None = None) -> str:
    """A short name of the wiring `rule` runs, for results tables ("stage, dense skips
    (regress), local loss only g2"; "Kolen-Pollack chain"; "backprop's path")."""
    rule = rule or config.rule
    w = create_wiring(config, rule)
    if rule in ("bp", "fa", "sign_symmetry"):
        return {"bp": "backprop's path", "fa": "backprop's path, fixed random B",
                "sign_symmetry": "backprop's path, sign(W)"}[rule]
    if w.sources != "recursive":
        return {"transpose": "Kolen-Pollack chain", "adjacent": "adjacent (LRA-E)",
                "direct": "direct (DFA)"}[w.sources]
    if config.model.name == "mlp":
        return f"modules of {w.module_size}, depth {w.depth}"
    modules = f"modules of {w.module_stages} stages" if w.module_stages > 1 else f"{w.module}s"
    name = f"{modules}{' + stem' * w.stem_module}, depth {w.depth}"
    if w.chain != "full":
        name += f", {w.chain} chain"
    if w.local_loss != "only":
        name += f", {w.skip_source} skips ({w.skip_learning}{', activity' * w.skip_activity})"
    if w.local_loss != "none":
        name += f", local loss {w.local_loss} g{w.local_loss_grid}"
        name += f" h{w.local_loss_hidden}" if w.local_loss_hidden else ""
        name += f" conv{w.local_loss_conv}" if w.local_loss_conv else ""
        name += " + inner blocks" if w.inner_loss else ""
        name += f" + recon {w.local_loss_recon:g}" if w.local_loss_recon else ""
        name += f" + sim {w.local_loss_sim:g}" if w.local_loss_sim else ""
        d = w.local_loss_distill
        each = w.local_loss_distill_each
        if each:
            name += f", output shares {'/'.join(f'{a:g}' for a in each)} (stage 1 first)"
        else:
            name += (f", distilled {d:g}" if d > 0 else f", readouts + {-d:g} e_L") if d else ""
    return name


def create_graph(config: ml_collections.ConfigDict, rule: str | None = None, *,
                 input_shape: tuple[int, ...] | None = None,
                 num_classes: int | None = None) -> wiring_lib.Graph:
    """The graph of `rule`'s wiring on config's model (autodiff rules: the Kolen-Pollack
    chain's, backprop's path). Shapes only: nothing is computed or read from data."""
    info = sources.DATASETS[config.dataset]
    shape = input_shape or info.image_shape
    if input_shape is None and info.streaming:
        shape = (config.data.image_size or 224,) * 2 + shape[-1:]
    model = create_model(config, num_classes or info.num_classes, "bp")
    x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    variables = jax.eval_shape(lambda a: model.init(jax.random.key(0), a, train=False), x)
    signals = jax.eval_shape(lambda v, a: model.apply(v, a, train=False), variables, x)
    activation = (models.get_activation(config.model.activation)
                  if config.model.name == "mlp" else None)
    return wiring_lib.build(create_wiring(config, rule), signals, variables["params"],
                            activation)


def target_hops(config: ml_collections.ConfigDict, rule: str | None = None, *,
                input_shape: tuple[int, ...] | None = None,
                num_classes: int | None = None) -> int:
    """The target hops of `rule` (default config.rule) on config's model: the critical path
    of its sweep (docs/algorithm.md, "Target hops"). Autodiff rules report backprop's path,
    the Kolen-Pollack chain's."""
    return wiring_lib.critical_path(create_graph(config, rule, input_shape=input_shape,
                                                 num_classes=num_classes))


def probes(config: ml_collections.ConfigDict, rule: str | None = None, *,
           input_shape: tuple[int, ...] | None = None, num_classes: int | None = None
           ) -> tuple[str, ...]:
    """The block outputs the train step probes (`lra.skip_learning=perturb`), or ()."""
    rule = rule or config.rule
    if rule != "rec_lra" or config.lra.get("skip_learning", "kp") != "perturb":
        return ()
    return wiring_lib.perturbed(create_graph(config, rule, input_shape=input_shape,
                                             num_classes=num_classes))


def feedback_is_learned(config: ml_collections.ConfigDict, rule: str | None = None) -> bool:
    """Whether the rule's error synapses are trained (and so get an optimizer)."""
    return rules.feedback_is_learned(rule or config.rule, config.lra.feedback_rule)


def create_optimizer(config: ml_collections.ConfigDict, *, total_steps: int,
                     rule: str | None = None,
                     update_rule: rules.Rule | None = None) -> optax.GradientTransformation:
    """The optax chain for {"params", "feedback"}: the rule, then config.optim.

    The rule's deltas (`create_rule`), per-tensor re-projection (the paper's update
    re-projection), then AdamW or SGD with the schedule; error synapses share the chain when
    they learn and are frozen (set_to_zero) otherwise. With on_nonfinite="skip" the part
    after the rule skips non-finite deltas (`optax.apply_if_finite`).
    """
    o, lr = config.optim, learning_rate(config, total_steps)
    if o.name == "adamw" and o.get("share_moments") and feedback_is_learned(config, rule) \
            and rules.RULES[rule or config.rule].local:
        twins = local.twins(create_graph(config, rule))  # adamw's chain, fewer moments
        opt = optax.chain(transforms.scale_by_adam_shared(twins),
                          optax.add_decayed_weights(o.weight_decay),
                          optax.scale_by_learning_rate(lr))
    elif o.name == "adamw":
        opt = optax.adamw(lr, weight_decay=o.weight_decay)
    else:
        opt = optax.chain(optax.add_decayed_weights(o.weight_decay),
                          optax.sgd(lr, momentum=o.momentum or None))
    scale = o.get("readout_lr_scale", 1.0)
    if scale != 1.0 and (rule or config.rule) == "rec_lra" and config.lra.get(
            "local_loss", "none") != "none":  # the readouts (and their twins) step faster
        keys = readout_keys(create_graph(config, rule))
        opt = optax.chain(opt, optax.masked(optax.scale(scale), lambda tree: {
            "params": jax.tree.map(lambda _: False, tree["params"]),
            "feedback": {k: jax.tree.map(lambda _, k=k: k in keys, v)
                         for k, v in tree["feedback"].items()}}))
    tx = optax.chain(transforms.clip_by_tensor_norm(o.clip_norm), opt) if o.clip_norm else opt
    if not feedback_is_learned(config, rule):
        tx = optax.partition({"learn": tx, "freeze": optax.set_to_zero()},
                             {"params": "learn", "feedback": "freeze"})
    if config.on_nonfinite == "skip":
        tx = optax.apply_if_finite(tx, max_consecutive_errors=config.max_consecutive_skips)
    return optax.chain(update_rule or create_rule(config, rule), tx)


def readout_keys(graph: wiring_lib.Graph) -> set[str]:
    """The feedback keys of the graph's readouts (A, a hidden readout's A_out and A_back, a
    conv head's K) and of the synapses that are their Kolen-Pollack twins (A^T carrying a
    readout's error into its unit), which must keep their twin's step."""
    keys = {k for r in graph.readouts for k in (r, f"{r}_out", f"{r}_back", f"{r}_conv")}
    return keys | {name for name, (path, _) in local.twins(graph).items()
                   if path[0] == "feedback" and path[1] in keys}


def learning_rate(config: ml_collections.ConfigDict, total_steps: int):
    """The learning-rate schedule of config.optim: step -> lr."""
    o = config.optim
    if o.schedule == "cosine":
        return optax.cosine_decay_schedule(o.lr, max(total_steps, 1), o.final_lr_frac)
    return optax.constant_schedule(o.lr)


def create_train_state(key, model, tx, input_shape, init_feedback=None) -> steps.TrainState:
    """Fresh parameters, BatchNorm statistics, error synapses and optimizer state.

    A local rule's synapses come from `init_feedback(key, signals, params)`
    (`create_feedback`), sized from the shapes of the model's signals; without it (the
    autodiff baselines) the fixed feedback kernels are the model's "feedback" collection.
    """
    x = jnp.zeros(input_shape)
    variables = model.init(jax.random.fold_in(key, 0), x, train=False)
    params = variables["params"]
    feedback_key = jax.random.fold_in(key, 1)
    if init_feedback is None:
        feedback = model.init(feedback_key, x, train=False).get("feedback", {})
    else:
        signals = jax.eval_shape(lambda: model.apply(variables, x, train=False))
        feedback = init_feedback(feedback_key, signals, params)
    opt_state = tx.init({"params": params, "feedback": feedback})
    return steps.TrainState(jnp.asarray(0, jnp.int32), params, feedback, opt_state,
                            dict(variables.get("batch_stats", {})))


class Setup(NamedTuple):
    """A built run: the pieces and the jitted steps the loop, benchmarks and tests call."""

    model: Any
    rule: rules.Rule
    tx: optax.GradientTransformation  # starts with the rule
    state: steps.TrainState  # the initial state (seeded by config.seed)
    step_kwargs: dict  # keyword arguments of steps.train_step
    train_fn: Any  # jit(train_steps)(state, data, batches), donating the state
    eval_fn: Any  # jit(eval_step)(params, batch_stats, images, labels)


def create_setup(config: ml_collections.ConfigDict, *, input_shape, num_classes: int,
                 total_steps: int, rule: str | None = None, normalization: str = "unit",
                 sharding=None, donate: bool = True, state_template: bool = False) -> Setup:
    """Model, rule, optimizer, initial state and jitted steps for `rule` (default config.rule).

    `state_template=True` when `Setup.state` will only be a template (the restore target
    of a checkpoint): its error synapses then skip the weight mirror (`lra.weight_mirror`),
    which sets nothing but their starting values and can take minutes at ImageNet scale.
    Shapes, dtypes and the train step are the same either way.
    """
    model = create_model(config, num_classes, rule)
    update_rule = create_rule(config, rule, total_steps=total_steps)
    tx = create_optimizer(config, total_steps=total_steps, rule=rule, update_rule=update_rule)
    key = jax.random.key(config.seed)
    state = create_train_state(key, model, tx, (1, *input_shape),
                               create_feedback(config, rule, weight_mirror=not state_template))
    autodiff = rules.RULES[rule or config.rule].autodiff
    probed = probes(config, rule, input_shape=input_shape, num_classes=num_classes)
    step_kwargs = dict(model=model, tx=tx, autodiff=autodiff, key=jax.random.fold_in(key, 2),
                       noise_std=config.input_noise, num_classes=num_classes,
                       sharding=sharding, augment=config.augment, normalization=normalization,
                       **({"probes": probed, "probe_sigma": config.lra.probe_sigma}
                          if probed else {}))
    train_fn = jax.jit(functools.partial(steps.train_steps, **step_kwargs),
                       donate_argnums=(0,) if donate else ())
    eval_fn = jax.jit(functools.partial(steps.eval_step, model=model,
                                        normalization=normalization))
    return Setup(model, update_rule, tx, state, step_kwargs, train_fn, eval_fn)


def describe_model(config: ml_collections.ConfigDict, input_shape, num_classes: int) -> str:
    """A short model name for results: "mlp-784-256-256-256-10", "resnet18-w64-cifar"."""
    m = config.model
    if m.name == "resnet":
        return f"resnet{m.depth}-w{m.width}-{m.stem}" + ("" if m.use_bn else "-nobn")
    widths = (int(np.prod(input_shape)), *m.hidden, num_classes)
    name = "mlp-" + "-".join(str(w) for w in widths)
    return name + (f"-res{m.residual_gap}" if m.residual_gap else "")


def certify_config(config: ml_collections.ConfigDict, *, batch_size: int = 2,
                   input_shape: tuple[int, ...] | None = None, num_classes: int | None = None,
                   rule: rules.Rule | None = None):
    """The weight-transport certificate (`certify.certify_step`) of config's train step.

    Builds the step exactly as training does, on zero inputs of the dataset's image shape
    (or `input_shape`); no data is read. `rule` replaces config.rule's rule (to certify
    your own rule inside the standard step).
    """
    from rec_lra_jax import certify  # noqa: PLC0415 - only this entry point needs it

    info = sources.DATASETS[config.dataset]
    shape = input_shape or info.image_shape
    if input_shape is None and info.streaming and config.data.image_size:
        shape = (config.data.image_size, config.data.image_size, shape[-1])
    setup = create_setup(config, input_shape=shape, num_classes=num_classes or info.num_classes,
                         total_steps=100, normalization=info.normalization, donate=False,
                         state_template=True)
    tx = setup.tx if rule is None else create_optimizer(config, total_steps=100,
                                                        update_rule=rule)
    # The certificate reads the step's computation, not the synapses' values: a state
    # without the weight mirror (same shapes) serves for config's own rule.
    state = setup.state if rule is None else create_train_state(
        jax.random.key(0), setup.model, tx, (1, *shape),
        create_feedback(config, weight_mirror=False))
    images = jnp.zeros((batch_size, *shape))
    labels = jnp.zeros((batch_size,), jnp.int32)

    def forward(params, x):
        return setup.model.apply(steps.model_variables(params, state.batch_stats), x,
                                 train=False)

    step = functools.partial(steps.train_step, **dict(setup.step_kwargs, tx=tx))
    return certify.certify_step(step, state, images, labels, forward_fn=forward)


class Plan(NamedTuple):
    """The training loop's settings, as plain values."""

    dataset: str
    rule: str
    seed: int
    batch_size: int
    eval_batch_size: int
    num_epochs: int
    steps_per_call: int
    log_every_steps: int
    checkpoint_every_epochs: float
    keep_checkpoints: int
    on_nonfinite: str
    cosine: bool
    test_curve: bool  # evaluate the test split after every epoch (for curves, not selection)
    config: dict  # the whole config as plain data, for config.json


def create_plan(config: ml_collections.ConfigDict) -> Plan:
    return Plan(config.dataset, config.rule, config.seed, config.batch_size,
                config.eval_batch_size, config.num_epochs, config.steps_per_call,
                config.log_every_steps, config.checkpoint_every_epochs, config.keep_checkpoints,
                config.on_nonfinite, config.diagnostics.cosine, config.diagnostics.test_curve,
                config.to_dict())


def create_cosine_fn(config: ml_collections.ConfigDict, setup: Setup, num_classes: int,
                     normalization: str = "unit"):
    """Jitted per-layer cosine and norm ratio of the rule's kernel deltas to backprop's gradient."""
    return diagnostics.make_cosine_fn(
        setup.model, setup.rule, create_model(config, num_classes, "bp"),
        create_rule(config, "bp"), num_classes=num_classes, normalization=normalization,
        autodiff=rules.RULES[config.rule].autodiff,
        probes=setup.step_kwargs.get("probes", ()),
        probe_sigma=setup.step_kwargs.get("probe_sigma", 0.05))
