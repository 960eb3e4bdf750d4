"""Update rules: rec-LRA, LRA-E and the baselines, each mapping a batch to a delta pytree.

A rule is an `UpdateRule(init, deltas)` pair, in the spirit of optax's
`GradientTransformation`:

  feedback = rule.init(key, params)
  deltas, aux = rule.deltas(params, feedback, x, labels, model=model)

`deltas` is {"params": <like params>, "feedback": <like feedback>}, a descent direction
for every tensor, handed as is to an optax chain (see `transforms.py`). Only `backprop`
differentiates through the network; the others run one forward pass, one top-down sweep
(`targets.compute_errors`) and one local correlation per layer.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from rec_lra_jax import targets
from rec_lra_jax.models import get_activation, layer_name

FEEDBACK_RULES = ("kp", "fixed", "error_displacement")
FEEDBACK_INITS = ("lra_e", "unit", "he", "lecun")

Params = Any
Deltas = dict[str, Any]


class UpdateRule(NamedTuple):
    """A learning rule: `init(key, params, *, model, x) -> feedback` and
    `deltas(params, feedback, x, labels, *, model, batch_stats=None) -> (deltas, aux)`.

    aux has "logits" and, for models with BatchNorm, the new "batch_stats". The MLP rules
    ignore model/x in init and batch_stats in deltas.
    """

    init: Callable[[jax.Array, Params], Params]
    deltas: Callable[..., tuple[Deltas, dict[str, jax.Array]]]


def layer_widths(params: Params) -> tuple[int, ...]:
    """Output widths d_1..d_L of the dense layers in `params`, in depth order."""
    names = sorted(params)
    return tuple(params[n]["kernel"].shape[-1] for n in names)


def init_feedback(
    key: jax.Array, params: Params, sources: Sequence[int], scheme: str = "lra_e"
) -> dict[str, jax.Array]:
    """Error synapses E_{src(l)->l}, shape (d_src, d_l), keyed by the receiving layer.

    Schemes (SPEC "Initialisation"): "lra_e" and "unit": N(0, 1); "he": N(0, 2 / d_src);
    "lecun": N(0, 1 / d_src).
    """
    variance = {"lra_e": lambda fan_in: 1.0, "unit": lambda fan_in: 1.0,
                "he": lambda fan_in: 2.0 / fan_in, "lecun": lambda fan_in: 1.0 / fan_in}
    if scheme not in variance:
        raise ValueError(f"Unknown feedback init {scheme!r}; choose one of {FEEDBACK_INITS}.")
    widths = layer_widths(params)
    feedback = {}
    for l, src in enumerate(sources, start=1):
        shape = (widths[src - 1], widths[l - 1])
        std = variance[scheme](shape[0]) ** 0.5
        feedback[layer_name(l - 1)] = std * jax.random.normal(jax.random.fold_in(key, l), shape)
    return feedback


def dense_deltas(
    acts: dict, errors: Sequence[jax.Array], *, phi: Callable | None = None
) -> dict[str, dict[str, jax.Array]]:
    """Local forward-weight deltas dW_l = z_{l-1}^T e_l / B, db_l = mean_batch(e_l).

    Each is the gradient of the layer's local loss <z_{l-1} W_l + b_l, e_l> / B with its
    input and error units held fixed: no phi', no other layer's weights. With `phi`
    given (the "dx" ablation) hidden errors are first multiplied by phi'(h_l).
    """
    batch = errors[-1].shape[0]
    num_layers = len(errors)
    out = {}
    for l, (z_in, e) in enumerate(zip(acts["inputs"], errors, strict=True), start=1):
        if phi is not None and l < num_layers:
            e = jax.jvp(phi, (acts["pre"][l - 1],), (e,))[1]
        out[layer_name(l - 1)] = {"kernel": z_in.T @ e / batch, "bias": jnp.mean(e, axis=0)}
    return out


def feedback_deltas(
    acts: dict,
    errors: Sequence[jax.Array],
    displacements: dict[str, jax.Array],
    sources: Sequence[int],
    *,
    rule: str = "kp",
    gamma: float = 1.0,
) -> dict[str, jax.Array]:
    """Error-synapse deltas (SPEC "Updates").

    "kp" (default, Kolen-Pollack): dE_{j->l} = gamma e_j^T z_l / B, the transpose of the
    delta a weight from l to j would get; "error_displacement": -gamma e_j^T d_l / B;
    "fixed": zeros.
    """
    if rule not in FEEDBACK_RULES:
        raise ValueError(f"Unknown feedback rule {rule!r}; choose one of {FEEDBACK_RULES}.")
    batch = errors[-1].shape[0]
    out = {}
    for l, src in enumerate(sources, start=1):
        name = layer_name(l - 1)
        e_src = errors[src - 1]
        if rule == "kp":
            out[name] = gamma * e_src.T @ acts["post"][l - 1] / batch
        elif rule == "error_displacement":
            out[name] = -gamma * e_src.T @ displacements[name] / batch
        else:
            out[name] = jnp.zeros((e_src.shape[-1], acts["post"][l - 1].shape[-1]))
    return out


def _check_inputs(x: jax.Array, labels: jax.Array) -> None:
    if labels.ndim != 2 or labels.shape[0] != x.shape[0]:
        raise ValueError(
            f"labels must be one-hot with shape (batch, classes); got {labels.shape} "
            f"for a batch of shape {x.shape}."
        )


def local_rule(
    wiring: Callable[[int], Sequence[int]],
    *,
    mode: str = "target",
    beta: float = 0.1,
    gamma: float = 1.0,
    error_unit: str = "l2",
    alpha_skip: float = 1.0,
    alpha_adjacent: float = 1.0,
    feedback_rule: str = "kp",
    feedback_init: str = "lra_e",
    dx: bool = False,
) -> UpdateRule:
    """Builds a local rule from a wiring L -> (src(1), ..., src(L-1)) and its options.

    All keyword arguments are those of SPEC "Interpretation choices"; see `rec_lra`.
    """
    for value, allowed in ((feedback_rule, FEEDBACK_RULES), (feedback_init, FEEDBACK_INITS),
                           (error_unit, targets.ERROR_UNITS), (mode, targets.MODES)):
        if value not in allowed:
            raise ValueError(f"Unknown option {value!r}; choose one of {allowed}.")

    def init_fn(key, params, **unused):
        del unused  # model, x: the ResNet rules need them to size their synapses
        return init_feedback(key, params, wiring(len(params)), feedback_init)

    def deltas_fn(params, feedback, x, labels, *, model: nn.Module, batch_stats=None):
        del batch_stats  # the MLP has no BatchNorm
        _check_inputs(x, labels)
        phi = get_activation(model.activation)
        acts = model.apply({"params": params}, x)
        sources = wiring(len(acts["pre"]))
        errors, displacements = targets.compute_errors(
            acts, labels, feedback, sources=sources, phi=phi, beta=beta, mode=mode,
            error_unit=error_unit, alpha_skip=alpha_skip, alpha_adjacent=alpha_adjacent,
        )
        deltas = {
            "params": dense_deltas(acts, errors, phi=phi if dx else None),
            "feedback": feedback_deltas(
                acts, errors, displacements, sources, rule=feedback_rule, gamma=gamma
            ),
        }
        return deltas, {"logits": acts["logits"], "errors": errors}

    return UpdateRule(init_fn, deltas_fn)


def rec_lra(*, module_size: int = 2, depth: int = 2, **kwargs) -> UpdateRule:
    """Recursive local representation alignment (Ororbia et al., AAAI 2023).

    Layers get targets ybar_l = phi(h_l - beta e_src E_{src->l}) from error skips over a
    module tree (`targets.recursive_sources`), update with dW_l = z_{l-1}^T e_l / B, and
    error synapses learn by Kolen-Pollack. Keyword arguments: beta, gamma, error_unit,
    alpha_skip, alpha_adjacent, feedback_rule, feedback_init, dx.
    """
    return local_rule(
        lambda n: targets.recursive_sources(n, module_size=module_size, depth=depth), **kwargs
    )


def lra_e(**kwargs) -> UpdateRule:
    """LRA-E (Ororbia & Mali, AAAI 2019): rec-LRA's sweep with adjacent wiring only."""
    return local_rule(targets.adjacent_sources, **kwargs)


def feedback_alignment(*, feedback_init: str = "lecun") -> UpdateRule:
    """Feedback alignment (Lillicrap et al. 2016): delta_l = phi'(h_l) (delta_{l+1} B_l)."""
    return local_rule(
        targets.adjacent_sources, mode="gradient", feedback_rule="fixed",
        feedback_init=feedback_init,
    )


def direct_feedback_alignment(*, feedback_init: str = "lecun") -> UpdateRule:
    """Direct feedback alignment (Nokland 2016): delta_l = phi'(h_l) (e_L B_l)."""
    return local_rule(
        targets.direct_sources, mode="gradient", feedback_rule="fixed",
        feedback_init=feedback_init,
    )


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy against one-hot labels."""
    return jnp.mean(optax.softmax_cross_entropy(logits, labels))


def backprop() -> UpdateRule:
    """Backpropagation baseline: deltas are jax.grad of the mean cross-entropy."""

    def init_fn(key, params, **unused):
        del key, params, unused
        return {}

    def deltas_fn(params, feedback, x, labels, *, model: nn.Module, batch_stats=None):
        del feedback, batch_stats
        _check_inputs(x, labels)

        def loss_fn(p):
            acts = model.apply({"params": p}, x)
            return cross_entropy(acts["logits"], labels), acts["logits"]

        grads, logits = jax.grad(loss_fn, has_aux=True)(params)
        return {"params": grads, "feedback": {}}, {"logits": logits}

    return UpdateRule(init_fn, deltas_fn)


def feedback_is_learned(rule: str, feedback_rule: str = "kp") -> bool:
    """Whether the rule's error synapses are trained (and so get an optimizer)."""
    return rule in ("rec_lra", "lra_e") and feedback_rule != "fixed"
