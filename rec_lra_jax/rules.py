"""Update rules as optax transforms: rec-LRA, LRA-E, Kolen-Pollack, DFA and the autodiff
baselines.

Each factory returns a plain `optax.GradientTransformationExtraArgs`. A local rule's
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
`backward` ("exact", "fa" or "sign"), whose feedback layers decide what flows back. What a
train step needs to know about a rule (autodiff or local, the model's backward, whether
its synapses learn) is in the registry, `RULES`; a local rule's synapses come from its
wiring (`wiring_of(name).init(...)`, as a model's parameters come from `model.init`).
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

Rule = optax.GradientTransformationExtraArgs  # what every factory here returns


def _check(value, allowed, what):
    if value not in allowed:
        raise ValueError(f"Unknown {what} {value!r}; choose one of {allowed}.")


WRAPPED = (
    "A local rule reads the forward signals of the call it is in and ignores the incoming "
    "updates, so it must receive the trainables themselves as its updates "
    "(tx.update(trainables, state, trainables, signals=..., labels=...)) and come first. It "
    "was handed other updates: a wrapper around it (optax.MultiSteps would train on the "
    "last micro-batch only; optax.masked / optax.partition hide parameters it must read) or "
    "a transform before it; or it runs in a branch traced inside the step (optax."
    "apply_if_finite around it would judge the trainables, not the rule's deltas, and apply "
    "a non-finite step). Put those after the rule: optax.chain(rule, "
    "optax.MultiSteps(opt, k)), optax.chain(rule, optax.partition(...)), optax.chain(rule, "
    "optax.apply_if_finite(opt, n)) (docs/library.md, 'Compositions').")


def check_unwrapped(updates: Any, params: Any) -> None:
    """Refuses a local rule that was not handed the trainables as its updates (`WRAPPED`).
    Python identity of the leaves, checked while tracing: no runtime cost."""
    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
    ups, ps = jax.tree.leaves(updates, is_leaf=masked), jax.tree.leaves(params, is_leaf=masked)
    if (len(ups) != len(ps) or any(masked(p) for p in ps)
            or any(u is not p for u, p in zip(ups, ps, strict=True)) or _in_a_branch(ups)):
        raise ValueError(WRAPPED)


def _in_a_branch(leaves: list) -> bool:
    """Whether the trainables are tracers of a trace enclosing the current one: the rule is
    traced in a branch (lax.cond) that closes over them, as inside optax.apply_if_finite or
    optax.MultiSteps. A plain jit, scan or shard_map step traces them where the rule runs.
    (JAX's trace context is internal; where it is missing the check is skipped.)"""
    try:
        from jax._src import core as jax_core  # noqa: PLC0415
        current = jax_core.trace_ctx.trace
    except (ImportError, AttributeError):  # pragma: no cover - another JAX layout
        return False
    return any(isinstance(x, jax.core.Tracer) and getattr(x, "_trace", current) is not current
               for x in leaves)


def check_labels(signals: dict, labels: jax.Array) -> None:
    logits = signals["logits"]
    if labels.shape != logits.shape:
        raise ValueError(f"labels must be one-hot with the logits' shape {logits.shape}; got "
                         f"{labels.shape}.")


def local_rule(*, wiring: Wiring, mode: str = "target", beta: Any = 0.1,
               gamma: Any = 1.0, error_unit: str = "l2", alpha_skip: Any = 1.0,
               alpha_adjacent: Any = 1.0, feedback_rule: str = "kp", dx: bool = False,
               bn_error: str = "jacobian", activation: str | Callable | None = None,
               output_error_unit: str | None = None, rescale: bool = False,
               grouped: bool = False) -> Rule:
    """A rule that is one top-down sweep plus local deltas (see `rec_lra` for the options)."""
    _check(mode, sweep.MODES, "mode")
    _check(error_unit, sweep.ERROR_UNITS, "error unit")
    if output_error_unit is not None:
        _check(output_error_unit, sweep.ERROR_UNITS, "output error unit")
    _check(feedback_rule, local.FEEDBACK_RULES, "feedback rule")
    _check(bn_error, sweep.NORM_ERRORS, "bn_error")
    phi = get_activation(activation) if activation is not None else None

    def graph(signals, params):
        return build(wiring, signals, params, phi)

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params, *, signals, labels, **unused):
        del unused
        check_unwrapped(updates, params)
        check_labels(signals, labels)
        g = graph(signals, params["params"])
        errors = sweep.run(g, signals, labels, params["feedback"], beta=beta, mode=mode,
                           error_unit=error_unit, alpha_skip=alpha_skip,
                           alpha_adjacent=alpha_adjacent, norm=bn_error,
                           output_error_unit=output_error_unit, rescale=rescale,
                           grouped=grouped)
        deltas = {"params": local.layer_deltas(g, signals, errors, dx=dx, norm=bn_error,
                                               grouped=grouped),
                  "feedback": local.synapse_deltas(g, signals, errors, rule=feedback_rule,
                                                   gamma=gamma, feedback=params["feedback"],
                                                   grouped=grouped)}
        return deltas, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def rec_lra(*, beta: Any = 0.1, gamma: Any = 1.0, wiring: Wiring | None = None,
            error_unit: str = "l2", alpha_skip: Any = 1.0, alpha_adjacent: Any = 1.0,
            feedback_rule: str = "kp", dx: bool = False, bn_error: str = "jacobian",
            activation: str | Callable | None = None,
            output_error_unit: str | None = "l2", rescale: bool = False,
            grouped: bool = False) -> Rule:
    """Recursive local representation alignment (Ororbia et al., AAAI 2023).

    Each unit gets the target ybar = phi(h - beta d) from a displacement d carried by its
    error synapse from an error up to `depth` hops away (`rl.Wiring`, default: module
    size 2, depth 2, dense skips, the last block of a residual net through the head);
    weights update with their local deltas; synapses learn by Kolen-Pollack. The synapses
    themselves come from the wiring: `wiring.init(key, signals, params)`.

    Args:
      beta: target nudge; gamma: synapse rate (either may be an optax schedule through
        `optax.inject_hyperparams`, below).
      wiring: which error drives each unit (`rl.Wiring`).
      error_unit, alpha_skip, alpha_adjacent: error units eps ("l2", "mixed", "cauchy")
        and the mixed units' alpha at skip and adjacent endpoints (and the output).
      output_error_unit: eps at the output only: "l2" (default) keeps e_out = softmax - y;
        None applies error_unit there too (with the paper's mixed preset that collapses
        training to one class: docs/algorithm.md, "Error units").
      feedback_rule: "kp", "error_displacement" or "fixed".
      dx: ablation: multiply each hidden layer's error by phi'(h) in its weight delta.
      rescale: divide each hidden unit's mismatch z - ybar by beta (errors keep their
        scale along chains such as module="stage"'s).
      bn_error: "jacobian", "output" or "scaled": a conv's error behind its BatchNorm.
      activation: the hidden activation of a dense chain (a name or a callable; residual
        nets use relu). With `inject_hyperparams`, pass a callable in `static_args`.
      grouped: same-shape layers' and synapses' deltas from one `jax.vmap` per group
        (`local.vmapped`; the same numbers up to float rounding).

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
                      alpha_adjacent=alpha_adjacent, feedback_rule=feedback_rule, dx=dx,
                      bn_error=bn_error, activation=activation,
                      output_error_unit=output_error_unit, rescale=rescale, grouped=grouped)


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
          dx: bool = False, bn_error: str = "jacobian",
          activation: str | Callable | None = None,
          output_error_unit: str | None = "l2", rescale: bool = False,
          grouped: bool = False) -> Rule:
    """LRA-E (Ororbia & Mali, AAAI 2019): rec-LRA with every unit driven from the one above.

    Takes rec_lra's options but `wiring` (on residual nets: each block from the block
    above through a conv-transpose synapse, the last through the head).

    >>> import rec_lra_jax as rl
    >>> tx = rl.lra_e(beta=0.05, activation="relu")
    >>> rl.RULES["lra_e"].autodiff
    False
    """
    return rec_lra(wiring=Wiring("adjacent"), beta=beta, gamma=gamma, error_unit=error_unit,
                   alpha_skip=alpha_skip, alpha_adjacent=alpha_adjacent,
                   feedback_rule=feedback_rule, dx=dx, bn_error=bn_error,
                   activation=activation, output_error_unit=output_error_unit,
                   rescale=rescale, grouped=grouped)


def kolen_pollack(*, beta: Any = 0.1, gamma: Any = 1.0, error_unit: str = "l2",
                  alpha_skip: Any = 1.0, alpha_adjacent: Any = 1.0,
                  dx: bool = False, bn_error: str = "jacobian",
                  activation: str | Callable | None = None,
                  output_error_unit: str | None = "l2", grouped: bool = False) -> Rule:
    """Backprop through Kolen-Pollack transposes (Kolen & Pollack 1994; Akrout et al.,
    NeurIPS 2019): a baseline beside `backprop`, `feedback_alignment` and `dfa`.

    Every unit is driven by the layers that read it, each through its own synapse shaped
    like that layer (a dense W^T, a conv-transpose, a shortcut's adjoint), errors divided by
    beta (`rescale`), and each synapse gets its layer's delta (Kolen-Pollack), optionally
    started by a weight mirror (`Wiring.init(..., weight_mirror=N)`). With synapses equal to
    the forward kernels and a small beta its deltas are backprop's gradient; during training
    each synapse is its layer plus the decaying difference of their inits
    (docs/algorithm.md, "The Kolen-Pollack chain"). Its target hops are backprop's (17 on
    ResNet-18): the recursion rec-LRA avoids. No forward weight is read.

    >>> import rec_lra_jax as rl
    >>> rl.wiring_of("kp").sources
    'transpose'
    """
    return local_rule(wiring=Wiring("transpose"), beta=beta, gamma=gamma,
                      error_unit=error_unit, alpha_skip=alpha_skip,
                      alpha_adjacent=alpha_adjacent, feedback_rule="kp", dx=dx,
                      bn_error=bn_error, activation=activation,
                      output_error_unit=output_error_unit, rescale=True, grouped=grouped)


def dfa(*, skip_source: str = "dense", bn_error: str = "jacobian",
        activation: str | Callable | None = None, grouped: bool = False) -> Rule:
    """Direct feedback alignment (Nokland 2016): e_u = phi'(h_u) (e_out B_u), fixed random B
    (`wiring_of("dfa", skip_source=...).init(...)`).

    >>> import rec_lra_jax as rl
    >>> rl.RULES["dfa"].backward
    'exact'
    """
    return local_rule(wiring=wiring_of("dfa", skip_source=skip_source), mode="gradient",
                      feedback_rule="fixed", bn_error=bn_error, activation=activation,
                      grouped=grouped)


def _autodiff() -> Rule:
    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, **unused):
        del unused
        feedback = params["feedback"] if params is not None else updates["feedback"]
        return {"params": updates["params"],
                "feedback": jax.tree.map(jnp.zeros_like, feedback)}, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def backprop() -> Rule:
    """Backpropagation: passes the autodiff gradient of the cross-entropy through.

    >>> import rec_lra_jax as rl
    >>> rl.RULES["bp"].autodiff
    True
    """
    return _autodiff()


def feedback_alignment() -> Rule:
    """Feedback alignment (Lillicrap et al. 2016): autodiff through a model built with
    backward="fa", whose layers send errors back through fixed random kernels.

    >>> import rec_lra_jax as rl
    >>> rl.RULES["fa"].backward
    'fa'
    """
    return _autodiff()


def sign_symmetry() -> Rule:
    """Sign symmetry (Liao et al. 2016, uSF): autodiff through a model built with
    backward="sign", whose layers send errors back through sign(W).

    >>> import rec_lra_jax as rl
    >>> rl.RULES["sign_symmetry"].backward
    'sign'
    """
    return _autodiff()


def rule_state(opt_state: Any) -> Any:
    """The state of the scheduled rule inside an optax chain's state, found by its
    hyperparameter's name (an `optax.inject_hyperparams` state holding "beta"), wherever
    the rule sits; None when no rule holds a schedule (a plain rule's state is empty, so a
    fresh one equals it)."""
    kinds = optax.InjectHyperparamsState | optax.InjectStatefulHyperparamsState
    is_state = lambda s: isinstance(s, kinds)
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=is_state)
             if is_state(s) and "beta" in s.hyperparams]
    if len(found) > 1:
        raise ValueError(f"{len(found)} transforms in the optimizer state hold a 'beta': "
                         f"one rule per chain.")
    return found[0] if found else None


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy against one-hot labels."""
    return jnp.mean(optax.softmax_cross_entropy(logits, labels))


class Spec(NamedTuple):
    """A registered rule: what a train step needs to know about it.

    factory: returns the rule's optax transform.
    learns_feedback: its error synapses are trained (with feedback_rule != "fixed").
    local: one top-down sweep plus local deltas (reads the lra.* options); the step passes
      the forward signals and one-hot labels as extra args.
    autodiff: the step passes the gradient of the cross-entropy through a model built with
      `backward` as the incoming updates (backprop, FA, sign symmetry).
    backward: what autodiff sends back through the model's layers ("exact", "fa", "sign").
    """

    factory: Callable[..., Rule]
    learns_feedback: bool
    local: bool
    autodiff: bool = False
    backward: str = "exact"


RULES = {
    "rec_lra": Spec(rec_lra, True, True),
    "lra_e": Spec(lra_e, True, True),
    "kp": Spec(kolen_pollack, True, True),
    "dfa": Spec(dfa, False, True),
    "bp": Spec(backprop, False, False, autodiff=True, backward="exact"),
    "fa": Spec(feedback_alignment, False, False, autodiff=True, backward="fa"),
    "sign_symmetry": Spec(sign_symmetry, False, False, autodiff=True, backward="sign"),
}


def wiring_of(name: str, *, wiring: Wiring | None = None, skip_source: str = "dense"
              ) -> Wiring | None:
    """The wiring whose sweep rule `name` runs (None for the autodiff rules): rec_lra's
    `wiring` (default `Wiring()`), LRA-E's adjacent chain, kp's transposes, DFA's direct
    skips (`skip_source` on residual nets). Its `init` makes the rule's synapses.

    >>> import rec_lra_jax as rl
    >>> rl.wiring_of("lra_e").sources
    'adjacent'
    """
    if name not in RULES:
        raise ValueError(f"Unknown rule {name!r}; choose one of {tuple(RULES)}.")
    if RULES[name].autodiff:
        return None
    return {"rec_lra": wiring or Wiring(), "lra_e": Wiring("adjacent"),
            "kp": Wiring("transpose"),
            "dfa": Wiring("direct", skip_source=skip_source, head_last=False)}[name]


def feedback_is_learned(rule: str, feedback_rule: str = "kp") -> bool:
    """Whether the rule's error synapses are trained (and so get an optimizer)."""
    return RULES[rule].learns_feedback and feedback_rule != "fixed"
