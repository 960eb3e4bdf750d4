"""The top-down sweep: from forward signals, labels and error synapses to every error.

One function for every model: it walks a `wiring.Graph` and reads only activities, error
units and error synapses. It takes no forward parameter at all, so it cannot transport a
forward weight by construction (docs/algorithm.md, "The sweep"):

  output:  e_out = eps(softmax(logits) - y)
  readout: e_r = eps(softmax(pool(z) A_r) - y)           (a unit's local loss, if wired;
           y -> (1 - a) y + a softmax(logits) with Wiring.local_loss_distill = a)
           e_s = B beta / (1 - beta) d sim(conv(z, S)) / dh  (predsim's term, if wired)
  unit u:  d_u = carry(E_u, e_src(u))                   (the unit's error synapse)
           target "target":   ybar_u = phi(h_u - beta d_u),  e_u = eps(z_u - ybar_u)
           mode "gradient":   e_u = phi'(h_u) d_u          (feedback alignment, DFA)
  layer:   its output error is its unit's error; behind a BatchNorm, `norm_error`
           carries it to the pre-normalisation output with that BatchNorm's own statistics.
  teacher: beside the sweep, a unit's `teach` synapses carry the layers above it to the
           displacement its skip synapse regresses on (no unit's target reads it).

eps uses alpha_adjacent where a unit is driven by the unit directly above, alpha_skip
elsewhere and at the output.
"""

import itertools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from rec_lra_jax import conv
from rec_lra_jax.wiring import Graph, Synapse, drives, get, similarity_key

ERROR_UNITS = ("l2", "mixed", "cauchy")
MODES = ("target", "gradient")
NORM_ERRORS = ("jacobian", "output", "scaled")


class Errors(NamedTuple):
    """What the sweep leaves for the local deltas."""

    units: dict[str, jax.Array]  # e_u for every unit (the output's under its name)
    sources: dict[str, jax.Array]  # the error each synapse carried
    displacements: dict[str, jax.Array]  # d per synapse, at the synapse's output
    teachers: dict[str, jax.Array] = {}  # noqa: RUF012 - a unit's teacher displacement
    readouts: dict[str, tuple] = {}  # noqa: RUF012 - hidden readouts' (output error, hidden)


def error_units(u: jax.Array, kind: str = "l2", alpha: Any = 1.0) -> jax.Array:
    """Error units eps(u) for the mismatch u = z - ybar (docs/algorithm.md, "Error units").

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


def norm_error(signals: dict | None, e: jax.Array, treatment: str = "jacobian") -> jax.Array:
    """The error before a BatchNorm given the error e at its output.

    "output": e itself; "scaled": e * gain (gain = BN scale / sigma_batch); "jacobian": e
    through the BatchNorm's own Jacobian, gain (e - mean(e) - x_hat mean(e x_hat)), which
    removes the per-channel shift and scale components that BatchNorm cancels. All three use
    only this layer's own statistics (like a ReLU's mask): no other layer's weights.
    """
    if signals is None or treatment == "output":
        return e
    gain = signals["gain"]
    if treatment == "scaled":
        return e * gain
    axes = tuple(range(e.ndim - 1))
    xhat = signals["xhat"]
    centred = e - jnp.mean(e, axis=axes) - xhat * jnp.mean(e * xhat, axis=axes)
    return centred * gain


MATMUL_FIRST = ("dense", "channel", "pool")  # synapse kinds that begin with e @ E


def carry(synapse: Synapse, E: jax.Array, e: jax.Array, shape: tuple[int, ...],
          activity: jax.Array | None = None, product: jax.Array | None = None) -> jax.Array:
    """The displacement a synapse of each kind gives a unit of activity shape `shape`
    ("bilinear" also reads the unit's own `activity` z: z (sum_k e_k E_k)). `product`: the
    matmul e E of a `MATMUL_FIRST` kind, already computed (`shared_products`)."""
    if synapse.kind == "bilinear":
        return jnp.einsum("bhwc,bcd->bhwd", activity, jnp.einsum("bk,kcd->bcd", e, E))
    if synapse.kind == "identity":
        return jnp.broadcast_to(e, shape)
    if synapse.kind in MATMUL_FIRST and product is None:
        product = e.reshape(e.shape[0], -1) @ E
    if synapse.kind == "dense":
        return product.reshape(shape)
    if synapse.kind == "channel":
        return jnp.broadcast_to(product[:, None, None, :], shape)
    if synapse.kind == "pool":
        grid = synapse.geometry[0]
        if grid == 1:
            return conv.avg_pool_adjoint(product, shape[1:3])
        return conv.grid_pool_adjoint(product, shape, grid)
    if synapse.kind == "conv":
        strides, padding = synapse.geometry
        return conv.transpose_displacement(e, E, shape, strides=strides, padding=padding)
    if synapse.kind == "upconv":
        factor, padding = synapse.geometry
        up = (shape[0], shape[1] * factor, shape[2] * factor, shape[3])
        return conv.upsample_adjoint(
            conv.transpose_displacement(e, E, up, padding=padding), factor)
    raise ValueError(f"Unknown synapse kind {synapse.kind!r}.")


def shared_sources(graph: Graph) -> dict[tuple[str, str], tuple[str, ...]]:
    """{error source: its synapses of a `MATMUL_FIRST` kind}, for sources that two or more
    such synapses carry (the paper's skips all read e_L): their products e E_1, ..., e E_n
    come from one matmul against [E_1 ... E_n] (`run(..., grouped=True)`)."""
    out: dict[tuple[str, str], list[str]] = {}
    for synapse in graph.synapses.values():
        if synapse.kind in MATMUL_FIRST:
            out.setdefault(synapse.source, []).append(synapse.name)
    return {source: tuple(names) for source, names in out.items() if len(names) > 1}


def shared_products(e: jax.Array, synapses: tuple[str, ...], feedback: dict
                    ) -> dict[str, jax.Array]:
    """{synapse: e E_s} for synapses that carry the same error e, from one matmul."""
    kernels = [feedback[s] for s in synapses]
    product = e.reshape(e.shape[0], -1) @ jnp.concatenate(kernels, axis=1)
    splits = list(itertools.accumulate(k.shape[1] for k in kernels))[:-1]
    return dict(zip(synapses, jnp.split(product, splits, axis=1), strict=True))


def readout_error(readout, signals: dict, labels: jax.Array, feedback: dict,
                  error_unit: str = "l2", alpha: Any = 1.0):
    """(error its pool synapse carries, output error, hidden activity or None) of a
    readout: e = eps(softmax(logits) - y), and with a hidden layer relu'(p A) (e A_back);
    with a conv layer, h = relu(conv(z, K)), logits = pool(h) A and the error at the conv's
    units relu'(conv(z, K)) pool^T(e A_back)."""
    if readout.conv:
        pre = conv.conv(get(signals, readout.reads), feedback[f"{readout.name}_conv"],
                        padding=1)
        hidden = jax.nn.relu(pre)
        e = error_units(jax.nn.softmax(conv.grid_pool(hidden, readout.grid)
                                       @ feedback[readout.name]) - labels, error_unit, alpha)
        back = conv.grid_pool_adjoint(e @ feedback[f"{readout.name}_back"], hidden.shape,
                                      readout.grid)
        return (pre > 0) * back, e, hidden
    pooled = conv.grid_pool(get(signals, readout.reads), readout.grid)
    if not readout.classes:
        e = error_units(jax.nn.softmax(pooled @ feedback[readout.name]) - labels, error_unit,
                        alpha)
        return e, e, None
    pre = pooled @ feedback[readout.name]
    hidden = jax.nn.relu(pre)
    e = error_units(jax.nn.softmax(hidden @ feedback[f"{readout.name}_out"]) - labels,
                    error_unit, alpha)
    return (pre > 0) * (e @ feedback[f"{readout.name}_back"]), e, hidden


def similarity(x: jax.Array) -> jax.Array:
    """The (B, B) cosine similarity matrix of a batch: a feature map's rows are each
    example's per-channel standard deviations over positions; each row is centred over its
    features and scaled to unit length (Nokland & Eidnes 2019)."""
    if x.ndim == 4:
        x = jnp.sqrt(jnp.var(x, axis=(1, 2), ddof=1) + 1e-8)
    x = x.reshape(x.shape[0], -1)
    x = x - jnp.mean(x, axis=1, keepdims=True)
    x = x / (1e-8 + jnp.sqrt(jnp.sum(x * x, axis=1, keepdims=True)))
    return x @ x.T


def similarity_error(readout, signals: dict, labels: jax.Array, feedback: dict) -> jax.Array:
    """predsim's error at h = conv(z, S): B beta / (1 - beta) times the derivative in h of
    mean((R(h) - R(y))^2), the local loss's derivative in its own input (a parameter-free
    function of h and the labels, as softmax - y is the cross-entropy's), so it weighs
    beta / (1 - beta) against the readout's per-example error (`Wiring.local_loss_sim`)."""
    z = get(signals, readout.reads)
    h = conv.conv(z, feedback[similarity_key(readout)], padding=1)
    target = jax.lax.stop_gradient(similarity(labels))
    grad = jax.grad(lambda h_: jnp.mean((similarity(h_) - target) ** 2))(h)
    return h.shape[0] * readout.sim / (1.0 - readout.sim) * grad


def decoder_error(decoder, signals: dict, feedback: dict) -> jax.Array:
    """A decoder's error x_hat - x, x_hat = conv3x3(upsample(z), D): its reconstruction of
    the input from the unit's activity (`Wiring.local_loss_recon`)."""
    z = conv.upsample(get(signals, decoder.reads), decoder.factor)
    return conv.conv(z, feedback[decoder.name], padding=1) - get(signals, decoder.target)


def _max_pool_adjoint(z: jax.Array, d: jax.Array, pool: tuple[int, int, int]) -> jax.Array:
    """Scatters each displacement to its window's argmax: the pool's own (parameter-free,
    local) adjoint, not a derivative through the network."""
    window, stride, pad = pool
    fn = lambda x: nn.max_pool(x, (window, window), (stride, stride), ((pad, pad), (pad, pad)))
    return jax.vjp(fn, z)[1](d)[0]


def run(graph: Graph, signals: dict, labels: jax.Array, feedback: dict, *, beta: Any = 0.1,
        mode: str = "target", error_unit: str = "l2", alpha_skip: Any = 1.0,
        alpha_adjacent: Any = 1.0, norm: str = "jacobian",
        output_error_unit: str | None = None, rescale: bool = False,
        grouped: bool = False) -> Errors:
    """Every unit's error, and each synapse's carried error and displacement.

    `output_error_unit` (default: `error_unit`) is eps at the output only; "l2" keeps the
    output error softmax - y (the cross-entropy's) while hidden units use mixed or Cauchy
    units. `rescale` divides each hidden unit's mismatch by beta before eps,
    e_u = eps((z_u - ybar_u) / beta): a target nudged by beta d leaves a mismatch of about
    beta phi'(h) d, so without it errors shrink by ~beta per hop along a long chain.
    `grouped`: synapses that carry the same error and begin with a matmul (`shared_sources`)
    share one matmul against their concatenated kernels (equal to the loop up to summation
    order).
    """
    units: dict[str, jax.Array] = {}
    sources: dict[str, jax.Array] = {}
    displacements: dict[str, jax.Array] = {}
    output = next(name for name, u in graph.units.items() if u.drive is None)
    units[output] = error_units(jax.nn.softmax(signals["logits"]) - labels,
                                output_error_unit or error_unit, alpha_skip)
    readouts = {}
    for name, readout in graph.readouts.items():  # block-local losses' errors
        target = labels if not readout.distill else (
            (1 - readout.distill) * labels + readout.distill * jax.nn.softmax(signals["logits"]))
        units[name], e, hidden = readout_error(readout, signals, target, feedback,
                                               output_error_unit or error_unit, alpha_skip)
        if hidden is not None:
            readouts[name] = (e, hidden)
        if readout.sim:
            units[similarity_key(readout)] = similarity_error(readout, signals, labels,
                                                              feedback)
    for name, decoder in graph.decoders.items():  # reconstructions' errors
        units[name] = decoder_error(decoder, signals, feedback)

    shared = shared_sources(graph) if grouped else {}
    products: dict[str, jax.Array] = {}

    def product(synapse: Synapse, e_src: jax.Array) -> jax.Array | None:
        if synapse.source not in shared:
            return None
        if synapse.name not in products:
            products.update(shared_products(e_src, shared[synapse.source], feedback))
        return products[synapse.name]

    def layer_error(name: str) -> jax.Array:
        layer = graph.layers[name]
        e = unit_error(layer.unit)
        return norm_error(get(signals, layer.norm) if layer.norm else None, e, norm)

    def unit_error(name: str) -> jax.Array:
        if name in units:
            return units[name]
        unit = graph.units[name]
        d, recon = 0.0, None
        for synapse in (graph.synapses[s] for s in drives(unit)):
            kind, source = synapse.source
            e_src = unit_error(source) if kind == "unit" else layer_error(source)
            z_s = get(signals, synapse.reads)
            d_s = carry(synapse, feedback.get(synapse.name), e_src, z_s.shape, z_s,
                        product(synapse, e_src))
            sources[synapse.name], displacements[synapse.name] = e_src, d_s
            if synapse.kind == "upconv":  # scaled against the unit's other drive below
                weight = graph.decoders[source].weight
                recon = (0.0 if recon is None else recon) + weight * d_s / (
                    jnp.linalg.norm(d_s) + 1e-12)
            else:
                d = d + d_s
        if recon is not None:
            d = d + jnp.linalg.norm(d) * recon
        z, pre = get(signals, unit.post), get(signals, unit.pre)
        if unit.pool is not None:
            d = _max_pool_adjoint(z, d, unit.pool)
        if mode == "gradient":
            e = jax.jvp(unit.phi, (pre,), (d,))[1]
        else:
            alpha = alpha_adjacent if unit.adjacent else alpha_skip
            mismatch = z - unit.phi(pre - beta * d)
            e = error_units(mismatch / beta if rescale else mismatch, error_unit, alpha)
        units[name] = e
        return e

    for name in graph.units:
        unit_error(name)
    teachers = {}
    for name, unit in graph.units.items():  # beside the sweep: no unit reads them
        d = 0.0
        for synapse in (graph.synapses[t] for t in unit.teach):
            kind, source = synapse.source
            e_src = unit_error(source) if kind == "unit" else layer_error(source)
            z_s = get(signals, synapse.reads)
            d_s = carry(synapse, feedback.get(synapse.name), e_src, z_s.shape, z_s,
                        product(synapse, e_src))
            sources[synapse.name], displacements[synapse.name] = e_src, d_s
            d = d + d_s
        if unit.teach:
            teachers[name] = d
    return Errors(units, sources, displacements, teachers, readouts)
