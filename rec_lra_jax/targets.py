"""Top-down sweeps: displacements, local targets and error units for every layer.

Layers are numbered l = 1..L (L is the output). Each hidden layer l receives its
displacement from exactly one source layer src(l) > l through its error synapses
E_{src(l)->l} (shape (d_src, d_l)): d_l = e_src E. The choice of src is what separates
LRA-E (adjacent), rec-LRA (error skips over a module tree) and DFA (all from the output).
"""

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from rec_lra_jax.models import layer_name

ERROR_UNITS = ("l2", "mixed", "cauchy")
MODES = ("target", "gradient")


def adjacent_sources(num_layers: int) -> tuple[int, ...]:
    """LRA-E / FA wiring: src(l) = l + 1 for l = 1..L-1."""
    return tuple(range(2, num_layers + 1))


def direct_sources(num_layers: int) -> tuple[int, ...]:
    """DFA wiring: src(l) = L for every hidden layer."""
    return (num_layers,) * (num_layers - 1)


def recursive_sources(num_layers: int, *, module_size: int, depth: int) -> tuple[int, ...]:
    """rec-LRA wiring: error skips over a module tree of the given depth (SPEC "rec-LRA").

    A layer is a level-k module output when l % m^(depth - k) == 0 (smallest such k in
    1..depth-1). Level-1 outputs take their displacement straight from the output error;
    a level-k output (1 < k < depth) from the next level-k output above it in its parent
    module; every other layer from the layer directly above (the LRA-E pathway). So no
    layer is more than `depth` hops from the output. depth=1 gives DFA-like wiring; a
    module larger than the network gives LRA-E.

    Args:
      num_layers: L, the number of weight layers including the output layer.
      module_size: m, layers per module at the finest level (default in configs: g).
      depth: recursion depth (the paper's default is 2).

    Returns:
      src(l) for l = 1..L-1.
    """
    if module_size < 1 or depth < 1:
        raise ValueError(f"module_size and depth must be >= 1, got {module_size}, {depth}.")
    sources = []
    for l in range(1, num_layers):
        level = next(
            (k for k in range(1, depth) if l % module_size ** (depth - k) == 0), depth
        )
        if level == 1:
            sources.append(num_layers)
        elif level == depth:
            sources.append(l + 1)
        else:
            sources.append(min(num_layers, l + module_size ** (depth - level)))
    return tuple(sources)


def error_units(u: jax.Array, kind: str = "l2", alpha: float = 1.0) -> jax.Array:
    """Error units eps(u) for the mismatch u = z - ybar (SPEC "Error units").

    "l2": u (local loss 1/2 ||u||^2); "mixed": alpha * u + (1 - alpha) * sign(u);
    "cauchy": 2u / (1 + u^2).
    """
    if kind == "l2":
        return u
    if kind == "mixed":
        return alpha * u + (1.0 - alpha) * jnp.sign(u)
    if kind == "cauchy":
        return 2.0 * u / (1.0 + u * u)
    raise ValueError(f"Unknown error unit {kind!r}; choose one of {ERROR_UNITS}.")


def compute_errors(
    acts: Mapping[str, Sequence[jax.Array]],
    labels: jax.Array,
    feedback: Mapping[str, jax.Array],
    *,
    sources: Sequence[int],
    phi: Callable[[jax.Array], jax.Array],
    beta: float = 0.1,
    mode: str = "target",
    error_unit: str = "l2",
    alpha_skip: float = 1.0,
    alpha_adjacent: float = 1.0,
) -> tuple[tuple[jax.Array, ...], dict[str, jax.Array]]:
    """Runs the top-down sweep and returns every layer's error units.

    Output: e_L = eps(softmax(h_L) - y). Hidden layers, l = L-1..1 (SPEC "LRA-E" 3):
      d_l = e_src(l) E_{src(l)->l}
      mode "target":   ybar_l = phi(h_l - beta d_l), e_l = eps(z_l - ybar_l)
      mode "gradient": e_l = phi'(h_l) * d_l   (feedback / direct feedback alignment)
    eps uses alpha_skip when src(l) != l + 1 (and at the output), alpha_adjacent otherwise.
    The sweep reads only activities, error units and error synapses: no forward weight.

    Args:
      acts: the model's forward dict ("pre", "post" per layer).
      labels: one-hot targets, shape (B, classes).
      feedback: error synapses keyed by the receiving layer's name.
      sources: src(l) for l = 1..L-1.
      phi: the hidden activation.

    Returns:
      (e_1, ..., e_L) and the displacements {layer name: d_l}.
    """
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; choose one of {MODES}.")
    pre, post = acts["pre"], acts["post"]
    num_layers = len(pre)
    if len(sources) != num_layers - 1:
        raise ValueError(f"Need {num_layers - 1} sources, got {len(sources)}.")
    errors: list[jax.Array | None] = [None] * num_layers
    errors[-1] = error_units(post[-1] - labels, error_unit, alpha_skip)
    displacements = {}
    for l in range(num_layers - 1, 0, -1):
        name = layer_name(l - 1)
        src = sources[l - 1]
        d = errors[src - 1] @ feedback[name]
        displacements[name] = d
        if mode == "gradient":
            errors[l - 1] = jax.jvp(phi, (pre[l - 1],), (d,))[1]
        else:
            alpha = alpha_adjacent if src == l + 1 else alpha_skip
            target = phi(pre[l - 1] - beta * d)
            errors[l - 1] = error_units(post[l - 1] - target, error_unit, alpha)
    return tuple(errors), displacements
