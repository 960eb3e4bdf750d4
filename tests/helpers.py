"""Small shared fixtures: a tiny MLP with a batch, smoke configs with overrides, and a
float64 ResNet whose mirror synapses are set to the kernels they mirror."""

import functools

import jax
import jax.numpy as jnp

from rec_lra_jax import config_schema, models, resnet
from rec_lra_jax import wiring as wiring_lib
from rec_lra_jax.wiring import Wiring


def tiny_mlp(features=(7, 6, 5, 4), *, input_dim=9, batch=6, seed=0, residual_gap=0,
             activation="tanh", init_scheme="lecun", dtype=jnp.float32):
    """Returns (model, params, x, one-hot labels) for a small MLP."""
    model = models.MLP(features=features, activation=activation, residual_gap=residual_gap,
                       init_scheme=init_scheme)
    key_x, key_y, key_p = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(key_x, (batch, input_dim), dtype)
    labels = jax.nn.one_hot(jax.random.randint(key_y, (batch,), 0, features[-1]), features[-1],
                            dtype=dtype)
    params = model.init(key_p, x)["params"]
    params = jax.tree.map(lambda p: p.astype(dtype), params)
    return model, params, x, labels


def tied_feedback(params, sources):
    """Error synapses E_{src->l} = W_{l+1}^T; valid (weight transport!) for adjacent sources."""
    names = sorted(params)
    return {names[l - 1]: params[names[src - 1]]["kernel"].T
            for l, src in enumerate(sources, start=1)}


def smoke_config(module=None, **overrides):
    """module.get_config("smoke") (default configs/fmnist_mlp.py) with dotted overrides,
    e.g. smoke_config(rule="bp", **{"optim.lr": 3e-3})."""
    if module is None:
        from configs import fmnist_mlp as module  # noqa: PLC0415
    config = module.get_config("smoke")
    with config.unlocked():
        for key, value in overrides.items():
            config_schema.set_key(config, key, value)
    return config


def rule_feedback(wiring, model, params, x, seed=1, *, activation="tanh", **init):
    """Fresh error synapses of `wiring` (a Wiring, or a rule name for its wiring) for `model`
    (sized from its signals on x); `init`: Wiring.init's options."""
    from rec_lra_jax import rules, steps  # noqa: PLC0415

    if isinstance(wiring, str):
        wiring = rules.wiring_of(wiring)
    signals = model.apply(steps.model_variables(params, {}), x, train=False)
    return wiring.init(jax.random.key(seed), signals, params, activation=activation, **init)


def rule_deltas(rule, model, params, feedback, x, labels, batch_stats=None):
    """The rule's deltas {"params", "feedback"} on one batch (no optimizer). `rule`: a
    transform of a local rule, or a registry name ("bp": its transform, autodiff)."""
    from rec_lra_jax import rules, steps  # noqa: PLC0415

    autodiff = False
    if isinstance(rule, str):
        autodiff, rule = rules.RULES[rule].autodiff, rules.RULES[rule].factory()
    return steps.rule_deltas(model, rule, params, feedback, batch_stats or {}, x, labels,
                             autodiff=autodiff)


def unit_errors(model, params, feedback, x, labels, *, wiring=None, activation="tanh",
                **options):
    """A dense chain's unit errors (e_1, ..., e_L) from the sweep, in layer order."""
    from rec_lra_jax import sweep  # noqa: PLC0415

    signals = model.apply({"params": params}, x)
    graph = wiring_lib.build(wiring or wiring_lib.Wiring(), signals, params,
                             models.get_activation(activation))
    errors = sweep.run(graph, signals, labels, feedback, **options)
    return tuple(errors.units[name] for name in sorted(params)), errors


@functools.cache
def mirror_oracle(depth, stem):
    """A ResNet in float64 and the Kolen-Pollack chain's synapses set to the forward weights
    they mirror
    (cached: several tests read it, none changes it)."""
    size = 32 if stem == "imagenet" else 16
    model = resnet.resnet(depth, num_classes=10, width=4, stem=stem)
    x = jax.random.normal(jax.random.key(2), (4, size, size, 3)).astype(jnp.float64)
    labels = jax.nn.one_hot(jnp.arange(4) % 10, 10)
    variables = model.init(jax.random.key(0), x, train=False)
    variables = jax.tree.map(lambda a: a.astype(jnp.float64), variables)
    params = variables["params"]
    signals = model.apply(variables, x, train=False)
    graph = wiring_lib.build(Wiring("transpose"), signals, params, None)
    oracle = {}
    for name, synapse in graph.synapses.items():
        if synapse.kind == "conv":
            oracle[name] = params[synapse.source[1]]["conv"]["kernel"]
        elif synapse.kind == "pool":
            oracle[name] = params["head"]["kernel"].T
    return model, variables, graph, oracle, x, labels
