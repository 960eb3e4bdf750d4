"""Update rules as optax transforms: rec-LRA, LRA-E, Kolen-Pollack, DFA and the autodiff
baselines.

Each factory returns an `optax.GradientTransformationExtraArgs` (a `Rule`). A local rule's
`update(updates, state, params, *, signals, labels)` ignores the incoming updates and
returns the local deltas of params = {"params": forward params, "feedback": error
synapses}, computed from the forward `signals` of the model, the one-hot `labels` and the
synapses alone (optax's `scale_by_polyak` is the precedent for side inputs passed as
keywords). So rules compose like any optax transform:

>>> import optax
>>> import rec_lra_jax as rl
>>> tx = optax.chain(rl.rec_lra(beta=0.1, activation="tanh"), optax.adam(1e-3))

A whole step with a model: the examples in the model modules (a dense chain and a
residual net), and docs/library.md.

The autodiff rules (`backprop`, `feedback_alignment`, `sign_symmetry`) pass the gradient
they are given through: the train step differentiates a model built with the rule's
`backward` ("exact", "fa" or "sign"), whose feedback layers decide what flows back.
The equations, every option and its default: docs/algorithm.md; the paper: Ororbia et al.,
"Backpropagation-free deep learning with recursive local representation alignment",
AAAI 2023.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rec_lra_jax import local, sweep
from rec_lra_jax.models import get_activation
from rec_lra_jax.wiring import Wiring, build


class Rule(optax.GradientTransformationExtraArgs):
    """An optax transform with three more attributes:

    autodiff: the train step passes the autodiff gradient of a model built with `backward`
      as the incoming updates (backprop, FA, sign symmetry); otherwise it passes the forward
      signals and labels as extra args and the rule computes the local deltas.
    backward: what autodiff sends back through the model's layers ("exact", "fa", "sign").
    init_feedback(key, signals, params): the rule's random error synapses ({} if none).
    """


def _rule(init_fn, update_fn, *, autodiff=False, backward="exact", init_feedback=None) -> Rule:
    rule = Rule(init_fn, update_fn)
    rule.autodiff, rule.backward = autodiff, backward
    rule.init_feedback = init_feedback or (lambda key, signals, params: {})
    return rule


def _check(value, allowed, what):
    if value not in allowed:
        raise ValueError(f"Unknown {what} {value!r}; choose one of {allowed}.")


def check_labels(signals: dict, labels: jax.Array) -> None:
    logits = signals["logits"]
    if labels.shape != logits.shape:
        raise ValueError(f"labels must be one-hot with the logits' shape {logits.shape}; got "
                         f"{labels.shape}.")


def local_rule(*, wiring: Wiring, mode: str = "target", beta: Any = 0.1,
               gamma: Any = 1.0, error_unit: str = "l2", alpha_skip: Any = 1.0,
               alpha_adjacent: Any = 1.0, feedback_rule: str = "kp",
               feedback_init: str | None = None, feedback_scale: Any = 1.0, dx: bool = False,
               bn_error: str = "jacobian", activation: str | Callable | None = None,
               output_error_unit: str | None = None, rescale: bool = False,
               weight_mirror: float = 0.0) -> Rule:
    """A rule that is one top-down sweep plus local deltas (see `rec_lra` for the options)."""
    _check(mode, sweep.MODES, "mode")
    _check(error_unit, sweep.ERROR_UNITS, "error unit")
    if output_error_unit is not None:
        _check(output_error_unit, sweep.ERROR_UNITS, "output error unit")
    _check(feedback_rule, local.FEEDBACK_RULES, "feedback rule")
    _check(bn_error, sweep.NORM_ERRORS, "bn_error")
    if feedback_init is not None:
        _check(feedback_init, local.FEEDBACK_INITS, "feedback init")
    phi = get_activation(activation) if activation is not None else None

    def graph(signals, params):
        return build(wiring, signals, params, phi)

    def init_feedback(key, signals, params):
        g = graph(signals, params)
        synapses = local.init_synapses(key, g, feedback_init, feedback_scale)
        if weight_mirror:
            synapses = local.weight_mirror(jax.random.fold_in(key, 0x5EED), g, signals, params,
                                           synapses, weight_mirror)
        return synapses

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params, *, signals, labels, **unused):
        del updates, unused
        check_labels(signals, labels)
        g = graph(signals, params["params"])
        errors = sweep.run(g, signals, labels, params["feedback"], beta=beta, mode=mode,
                           error_unit=error_unit, alpha_skip=alpha_skip,
                           alpha_adjacent=alpha_adjacent, norm=bn_error,
                           output_error_unit=output_error_unit, rescale=rescale)
        deltas = {"params": local.layer_deltas(g, signals, errors, dx=dx, norm=bn_error),
                  "feedback": local.synapse_deltas(g, signals, errors, rule=feedback_rule,
                                                   gamma=gamma, feedback=params["feedback"])}
        return deltas, state

    return _rule(init_fn, update_fn, init_feedback=init_feedback)


def rec_lra(*, beta: Any = 0.1, gamma: Any = 1.0, wiring: Wiring | None = None,
            error_unit: str = "l2", alpha_skip: Any = 1.0, alpha_adjacent: Any = 1.0,
            feedback_rule: str = "kp", feedback_init: str | None = None,
            feedback_scale: Any = 1.0, dx: bool = False, bn_error: str = "jacobian",
            activation: str | Callable | None = None,
            output_error_unit: str | None = "l2", rescale: bool = False,
            weight_mirror: float = 0.0) -> Rule:
    """Recursive local representation alignment (Ororbia et al., AAAI 2023).

    Each unit gets the target ybar = phi(h - beta d) from a displacement d carried by its
    error synapse from an error up to `depth` hops away (`rl.Wiring`, default: module
    size 2, depth 2, dense skips, the last block of a residual net through the head);
    weights update with their local deltas; synapses learn by Kolen-Pollack.

    Args:
      beta: target nudge; gamma: synapse rate (both may be scheduled: `scheduled`).
      wiring: which error drives each unit (`rl.Wiring`).
      error_unit, alpha_skip, alpha_adjacent: error units eps ("l2", "mixed", "cauchy")
        and the mixed units' alpha at skip and adjacent endpoints (and the output).
      output_error_unit: eps at the output only: "l2" (default) keeps e_out = softmax - y;
        None applies error_unit there too (with the paper's mixed preset that collapses
        training to one class: docs/algorithm.md, "Error units").
      feedback_rule: "kp", "error_displacement" or "fixed".
      feedback_init, feedback_scale: synapse init (None: "lra_e" on dense chains, "he" on
        residual nets) and a multiplier of its std.
      dx: ablation: multiply each hidden layer's error by phi'(h) in its weight delta.
      rescale: divide each hidden unit's mismatch z - ybar by beta (errors keep their
        scale along chains such as module="stage"'s).
      bn_error: "jacobian", "output" or "scaled": a conv's error behind its BatchNorm.
      weight_mirror: 0 (off) or the noise samples per fan-in unit of a weight-mirror start
        (Akrout et al., NeurIPS 2019) for the synapses that mirror a residual net's layer
        (`local.weight_mirror`: the conv synapses inside a block or stage, the head's pool
        synapse): each starts at an estimate of that layer's kernel from its response to
        noise.
      activation: the hidden activation of a dense chain (a name or a callable; residual
        nets use relu). With `inject_hyperparams`, pass a callable in `static_args`.

    Example (beta scheduled without recompiling, a deeper wiring):

    >>> import optax
    >>> import rec_lra_jax as rl
    >>> rule = optax.inject_hyperparams(rl.rec_lra)(
    ...     beta=optax.linear_schedule(0.05, 0.2, 100), wiring=rl.Wiring(depth=3))
    >>> isinstance(rule, optax.GradientTransformationExtraArgs)
    True
    """
    wiring = wiring or Wiring()
    if wiring.sources == "transpose":
        raise ValueError("Wiring('transpose') is the Kolen-Pollack chain, backprop's path with "
                         "learned transposes: a baseline, not rec-LRA. Use "
                         "rl.kolen_pollack(...) (rule 'kp').")
    return local_rule(wiring=wiring, beta=beta, gamma=gamma,
                      error_unit=error_unit, alpha_skip=alpha_skip,
                      alpha_adjacent=alpha_adjacent, feedback_rule=feedback_rule,
                      feedback_init=feedback_init, feedback_scale=feedback_scale, dx=dx,
                      bn_error=bn_error, activation=activation,
                      output_error_unit=output_error_unit, rescale=rescale,
                      weight_mirror=weight_mirror)


def scheduled(factory: Callable[..., Rule], *, beta: Any, gamma: Any = 1.0,
              **options) -> Rule:
    """`factory(beta=..., gamma=..., **options)` with beta and gamma given as schedules.

    A schedule is a callable of the rule's own step count (an optax schedule) or a number;
    the values live in the rule's state (`optax.inject_hyperparams`), so they change
    without recompiling and resume with a checkpoint. Unlike a bare `inject_hyperparams`,
    the result keeps the `Rule` attributes (`init_feedback`, `autodiff`, `backward`) of
    the rule it schedules.

    >>> import optax
    >>> import rec_lra_jax as rl
    >>> rule = rl.rules.scheduled(rl.rec_lra, beta=optax.linear_schedule(0.05, 0.01, 1000),
    ...                           rescale=True)
    >>> isinstance(rule, rl.Rule) and callable(rule.init_feedback)
    True
    """
    def start(value):
        return value(0) if callable(value) else value

    plain = factory(beta=start(beta), gamma=start(gamma), **options)

    def inner(beta, gamma):
        return factory(beta=beta, gamma=gamma, **options)

    tx = optax.inject_hyperparams(inner)(beta=beta, gamma=gamma)
    return _rule(tx.init, tx.update, autodiff=plain.autodiff, backward=plain.backward,
                 init_feedback=plain.init_feedback)


def schedule(kind: str, start: float, final: float, total_steps: int):
    """A hyperparameter's value by step: "constant" (start; returned as the number),
    "linear" or "cosine" from start at step 0 to final at `total_steps` (held after)."""
    _check(kind, SCHEDULES, "schedule")
    if kind == "constant":
        return start
    horizon = max(int(total_steps), 1)

    def value(count):
        frac = jnp.minimum(jnp.asarray(count, jnp.float32) / horizon, 1.0)
        if kind == "cosine":
            frac = 0.5 * (1.0 - jnp.cos(jnp.pi * frac))
        return start + (final - start) * frac

    return value


SCHEDULES = ("constant", "linear", "cosine")


def lra_e(*, beta: Any = 0.1, gamma: Any = 1.0, error_unit: str = "l2",
          alpha_skip: Any = 1.0, alpha_adjacent: Any = 1.0, feedback_rule: str = "kp",
          feedback_init: str | None = None, feedback_scale: Any = 1.0, dx: bool = False,
          bn_error: str = "jacobian", activation: str | Callable | None = None,
          output_error_unit: str | None = "l2", rescale: bool = False) -> Rule:
    """LRA-E (Ororbia & Mali, AAAI 2019): rec-LRA with every unit driven from the one above.

    Takes rec_lra's options but `wiring` (on residual nets: each block from the block
    above through a conv-transpose synapse, the last through the head).

    >>> import rec_lra_jax as rl
    >>> rl.lra_e(beta=0.05, activation="relu").autodiff
    False
    """
    return rec_lra(wiring=Wiring("adjacent"), beta=beta, gamma=gamma, error_unit=error_unit,
                   alpha_skip=alpha_skip, alpha_adjacent=alpha_adjacent,
                   feedback_rule=feedback_rule, feedback_init=feedback_init,
                   feedback_scale=feedback_scale, dx=dx, bn_error=bn_error,
                   activation=activation, output_error_unit=output_error_unit,
                   rescale=rescale)


def kolen_pollack(*, beta: Any = 0.1, gamma: Any = 1.0, error_unit: str = "l2",
                  alpha_skip: Any = 1.0, alpha_adjacent: Any = 1.0,
                  feedback_init: str | None = None, feedback_scale: Any = 1.0,
                  dx: bool = False, bn_error: str = "jacobian",
                  activation: str | Callable | None = None,
                  output_error_unit: str | None = "l2", weight_mirror: float = 0.0) -> Rule:
    """Backprop through Kolen-Pollack transposes (Kolen & Pollack 1994; Akrout et al.,
    NeurIPS 2019): a baseline beside `backprop`, `feedback_alignment` and `dfa`.

    Every unit is driven by the layers that read it, each through its own synapse shaped
    like that layer (a dense W^T, a conv-transpose, a shortcut's adjoint), errors divided by
    beta (`rescale`), and each synapse gets its layer's delta (Kolen-Pollack), optionally
    started by a weight mirror. With synapses equal to the forward kernels and a small beta
    its deltas are backprop's gradient; during training each synapse is its layer plus the
    decaying difference of their inits (docs/algorithm.md, "The Kolen-Pollack chain"). Its
    target hops are backprop's (17 on ResNet-18): the recursion rec-LRA avoids. No forward
    weight is read.

    >>> import rec_lra_jax as rl
    >>> rl.kolen_pollack(beta=0.05, activation="tanh").autodiff
    False
    """
    return local_rule(wiring=Wiring("transpose"), beta=beta, gamma=gamma,
                      error_unit=error_unit, alpha_skip=alpha_skip,
                      alpha_adjacent=alpha_adjacent, feedback_rule="kp",
                      feedback_init=feedback_init, feedback_scale=feedback_scale, dx=dx,
                      bn_error=bn_error, activation=activation,
                      output_error_unit=output_error_unit, rescale=True,
                      weight_mirror=weight_mirror)


def dfa(*, feedback_init: str | None = None, feedback_scale: Any = 1.0,
        skip_source: str = "dense", bn_error: str = "jacobian",
        activation: str | Callable | None = None) -> Rule:
    """Direct feedback alignment (Nokland 2016): e_u = phi'(h_u) (e_out B_u), fixed random B.

    >>> import rec_lra_jax as rl
    >>> rl.dfa(activation="tanh").backward
    'exact'
    """
    return local_rule(wiring=Wiring("direct", skip_source=skip_source, head_last=False),
                      mode="gradient", feedback_rule="fixed", feedback_init=feedback_init,
                      feedback_scale=feedback_scale, bn_error=bn_error, activation=activation)


def _autodiff(backward: str) -> Rule:
    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, **unused):
        del unused
        feedback = params["feedback"] if params is not None else updates["feedback"]
        return {"params": updates["params"],
                "feedback": jax.tree.map(jnp.zeros_like, feedback)}, state

    return _rule(init_fn, update_fn, autodiff=True, backward=backward)


def backprop() -> Rule:
    """Backpropagation: passes the autodiff gradient of the cross-entropy through.

    >>> import rec_lra_jax as rl
    >>> rl.backprop().autodiff
    True
    """
    return _autodiff("exact")


def feedback_alignment() -> Rule:
    """Feedback alignment (Lillicrap et al. 2016): autodiff through a model built with
    backward="fa", whose layers send errors back through fixed random kernels.

    >>> import rec_lra_jax as rl
    >>> rl.feedback_alignment().backward
    'fa'
    """
    return _autodiff("fa")


def sign_symmetry() -> Rule:
    """Sign symmetry (Liao et al. 2016, uSF): autodiff through a model built with
    backward="sign", whose layers send errors back through sign(W).

    >>> import rec_lra_jax as rl
    >>> rl.sign_symmetry().backward
    'sign'
    """
    return _autodiff("sign")


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy against one-hot labels."""
    return jnp.mean(optax.softmax_cross_entropy(logits, labels))


class Spec(NamedTuple):
    """A registered rule: its factory, and whether its error synapses learn."""

    factory: Callable[..., Rule]
    learns_feedback: bool  # with feedback_rule != "fixed"
    local: bool  # reads the lra.* options


RULES = {
    "rec_lra": Spec(rec_lra, True, True),
    "lra_e": Spec(lra_e, True, True),
    "kp": Spec(kolen_pollack, True, True),
    "dfa": Spec(dfa, False, True),
    "bp": Spec(backprop, False, False),
    "fa": Spec(feedback_alignment, False, False),
    "sign_symmetry": Spec(sign_symmetry, False, False),
}


def feedback_is_learned(rule: str, feedback_rule: str = "kp") -> bool:
    """Whether the rule's error synapses are trained (and so get an optimizer)."""
    return RULES[rule].learns_feedback and feedback_rule != "fixed"
