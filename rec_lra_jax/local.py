"""Local deltas: every weight layer's and every error synapse's update from signals and errors.

Each delta is the gradient of one layer's (or one synapse's) local loss with its input and
its error held fixed (docs/algorithm.md, "Local updates"):

  dense layer:   dW = z_in^T e / B, db = mean(e)
  conv layer:    dW = corr(z_in, e_pre) / B, with e_pre = `sweep.norm_error` of e
  BatchNorm:     d_scale = sum(e x_hat) / B, d_bias = sum(e) / B
  synapse "kp":  the delta a forward weight from the synapse's unit to its source would
                 get: gamma * corr(z_u, e_src) (Kolen-Pollack); "error_displacement":
                 -gamma * corr(d_u, e_src); "fixed": zeros.

`weight_mirror` is an optional start for the synapses that stand for one layer (a conv, or
the head behind a pool synapse): each learns from that layer's response to noise (Akrout
et al., NeurIPS 2019), before training.

With `dx` (an ablation) a hidden layer's error is first multiplied by phi'(h) of its unit.
"""

import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from rec_lra_jax import conv
from rec_lra_jax.models import get_activation
from rec_lra_jax.sweep import Errors, carry, norm_error
from rec_lra_jax.wiring import Graph, Synapse, build, drives, get, similarity_key

FEEDBACK_RULES = ("kp", "fixed", "error_displacement")
FEEDBACK_INITS = ("unit", "he", "lecun")
# "lra_e" named both N(0, 1) synapses here and N(0, 0.1^2) forward weights (models.py);
# the synapse scheme is "unit" now (the same draw), the forward scheme keeps the name.
RENAMED_INIT = ("The synapse init 'lra_e' is 'unit' now (N(0, 1), the same draw); "
                "'lra_e' names only the forward weights' N(0, 0.1^2) (model.init).")


def _put(tree: dict, path: tuple, value: jax.Array) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def layer_deltas(graph: Graph, signals: dict, errors: Errors, *, dx: bool = False,
                 norm: str = "jacobian", grouped: bool = False) -> dict[str, Any]:
    """{layer name: deltas shaped like that layer's params}.

    `grouped`: layers with the same kind, geometry and shapes (a stack of equal hidden
    layers, the repeated convs of a ResNet stage) get their deltas from one `jax.vmap`
    over the group (`vmapped`) instead of one op each; the same numbers up to float
    rounding (tests/test_local.py). Whether it is faster depends on the backend
    (BENCHMARKS.md, "Grouped updates").
    """
    inputs = {}
    for name, layer in graph.layers.items():
        unit = graph.units[layer.unit]
        inputs[name] = (get(signals, layer.input), errors.units[layer.unit],
                        get(signals, unit.pre) if dx and unit.pre is not None else None,
                        get(signals, layer.norm) if layer.norm else None)

    def static(name):
        layer, unit = graph.layers[name], graph.units[graph.layers[name].unit]
        return (layer.kind, layer.kernel_shape, layer.geometry, layer.bias is None,
                layer.norm is None, layer.affine is None, unit.phi if dx else None)

    def delta(key, x, e, pre, norm_signals):
        kind, kernel_shape, geometry, _, _, _, phi = key
        if pre is not None:
            e = jax.jvp(phi, (pre,), (e,))[1]
        if kind == "dense":
            return x.T @ e / e.shape[0], jnp.mean(e, axis=0), None
        e_pre = norm_error(norm_signals, e, norm)
        strides, padding = geometry
        kernel = conv.kernel_delta(x, e_pre, kernel_shape, strides=strides, padding=padding)
        bias = jnp.mean(e_pre, axis=tuple(range(e.ndim - 1)))
        affine = (conv.bn_affine_deltas(e, norm_signals["xhat"])
                  if norm_signals is not None else None)
        return kernel, bias, affine

    results = vmapped(inputs, static, delta) if grouped else {
        name: delta(static(name), *args) for name, args in inputs.items()}
    out: dict[str, Any] = {}
    for name, layer in graph.layers.items():
        kernel, bias, affine = results[name]
        deltas: dict[str, Any] = {}
        _put(deltas, layer.kernel, kernel)
        if layer.bias is not None:
            _put(deltas, layer.bias, bias)
        if layer.affine is not None:
            _put(deltas, layer.affine, affine)
        out[name] = deltas
    return out


def vmapped(inputs: dict[str, Any], static, fn) -> dict[str, Any]:
    """{name: fn(static(name), *inputs[name])}, with the names whose static key and input
    shapes agree computed by one `jax.vmap` of fn over their stacked inputs (None inputs
    stay None). Groups of one are called directly."""
    groups: dict[Any, list[str]] = {}
    for name, args in inputs.items():
        shapes = jax.tree.map(lambda a: (a.shape, a.dtype), args)
        groups.setdefault((static(name), jax.tree.structure(args), str(shapes)), []).append(name)
    out = {}
    for (key, _, _), names in groups.items():
        if len(names) == 1:
            out[names[0]] = fn(key, *inputs[names[0]])
            continue
        stacked = jax.tree.map(lambda *a: jnp.stack(a), *(inputs[n] for n in names))
        result = jax.vmap(functools.partial(fn, key))(*stacked)
        for i, name in enumerate(names):
            out[name] = jax.tree.map(lambda a, i=i: a[i], result)
    return out


def correlate(synapse: Synapse, a: jax.Array, e: jax.Array, coef: Any) -> jax.Array:
    """coef * the delta a forward map from activity `a` to error `e` of this synapse's
    shape would get (its transpose carries e back to a's space)."""
    batch = e.shape[0]
    if synapse.kind == "dense":
        return coef * e.reshape(batch, -1).T @ a.reshape(batch, -1) / batch
    if synapse.kind == "channel":
        return coef * e.T @ jnp.sum(a, axis=(1, 2)) / batch
    if synapse.kind == "pool":
        return coef * e.T @ conv.grid_pool(a, synapse.geometry[0]) / batch
    strides, padding = synapse.geometry
    return coef * conv.kernel_delta(a, e, synapse.shape, strides=strides, padding=padding)


def regress(synapse: Synapse, E: jax.Array, e: jax.Array, residual: jax.Array, coef: Any,
            activity: jax.Array | None = None) -> jax.Array:
    """coef * the gradient in E of the local regression loss ||d - teacher||^2 / (2 B) of
    the unit the synapse drives, where d sums the unit's regressed skips and `residual` is
    d - teacher: the transpose of one linear map of E, its error and activity held fixed."""
    _, vjp = jax.vjp(lambda k: carry(synapse, k, e, residual.shape, activity), E)
    return coef * vjp(residual)[0] / e.shape[0]


def probe_regress(E: jax.Array, xi: jax.Array, delta: jax.Array, coef: Any) -> jax.Array:
    """coef * the gradient in E of ||E - mean_b(delta_b^T xi_b)||^2 / 2: a skip synapse
    (K, HWC) pulled toward the logits' Jacobian in the unit's output averaged over the
    batch, estimated from a probe (`Wiring.skip_learning="perturb"`): xi the unit's output
    perturbation over sigma, delta the logits' change over sigma."""
    batch = xi.shape[0]
    target = delta.T @ xi.reshape(batch, -1) / batch
    return coef * (E - target.astype(E.dtype))


def synapse_deltas(graph: Graph, signals: dict, errors: Errors, *, rule: str = "kp",
                   gamma: Any = 1.0, feedback: dict | None = None,
                   grouped: bool = False) -> dict[str, jax.Array]:
    """{synapse name: its delta} under `rule` ("kp", "error_displacement", "fixed"); a skip
    synapse of a unit with a teacher (`Wiring.skip_learning="regress"`) regresses its
    displacement onto the teacher instead (needs the synapses, `feedback`). `grouped`: the
    correlations of synapses with the same kind, geometry and shapes come from one
    `jax.vmap` (as `layer_deltas`)."""
    if rule not in FEEDBACK_RULES:
        raise ValueError(f"Unknown feedback rule {rule!r}; choose one of {FEEDBACK_RULES}.")
    out = {}
    sims = {similarity_key(r): r for r in graph.readouts.values() if r.sim}
    regressed = {s: u for u, unit in graph.units.items() if unit.teach
                 for s in drives(unit) if graph.synapses[s].source[1] not in graph.readouts
                 and graph.synapses[s].source[1] not in sims
                 and graph.synapses[s].kind != "upconv"}
    probed = {s: u for u, unit in graph.units.items() if unit.perturb for s in drives(unit)
              if graph.synapses[s].kind == "dense" and graph.synapses[s].source == ("unit",
                                                                                 "head")}
    residuals, correlations = {}, {}
    for s, u in regressed.items():
        residuals[u] = residuals.get(u, -errors.teachers[u]) + errors.displacements[s]
    for name, synapse in graph.synapses.items():
        if synapse.kind in ("identity", "upconv") or synapse.source[1] in sims:
            continue  # no parameters; a decoder's or a similarity conv's synapse: below
        if name in probed and rule != "fixed":
            out[name] = probe_regress(feedback[name], *signals["perturbed"][probed[name]],
                                      gamma)
        elif name in regressed and rule != "fixed":
            out[name] = regress(synapse, feedback[name], errors.sources[name],
                                residuals[regressed[name]], gamma,
                                get(signals, synapse.reads))
        elif rule == "fixed":
            out[name] = jnp.zeros(synapse.shape)
        elif rule == "kp":
            correlations[name] = (get(signals, synapse.reads), errors.sources[name])
        else:
            correlations[name] = (errors.displacements[name], errors.sources[name])
    sign = 1.0 if rule == "kp" else -1.0

    def static(name):
        synapse = graph.synapses[name]
        return synapse.kind, synapse.shape, synapse.geometry

    def correlation(key, a, e):
        kind, shape, geometry = key
        return correlate(Synapse("", kind, ("", ""), "", (), shape, geometry), a, e,
                         sign * gamma)

    out.update(vmapped(correlations, static, correlation) if grouped else {
        name: correlation(static(name), *args) for name, args in correlations.items()})
    for name, readout in graph.readouts.items():  # a readout learns its own local loss
        if readout.conv:  # A on the pooled conv units, A_back its synapse, K on z
            e, hidden = errors.readouts[name]
            pooled = conv.grid_pool(hidden, readout.grid)
            z = get(signals, readout.reads)
            out[name] = pooled.T @ e / z.shape[0]
            out[f"{name}_back"] = gamma * e.T @ pooled / z.shape[0]
            out[f"{name}_conv"] = conv.kernel_delta(
                z, errors.units[name], (3, 3, z.shape[-1], readout.conv), padding=1)
            continue
        pooled = conv.grid_pool(get(signals, readout.reads), readout.grid)
        batch = pooled.shape[0]
        out[name] = pooled.T @ errors.units[name] / batch
        if readout.classes:  # the hidden layer's output weights and their synapse
            e, hidden = errors.readouts[name]
            out[f"{name}_out"] = hidden.T @ e / batch
            out[f"{name}_back"] = gamma * e.T @ hidden / batch
    for name, readout in sims.items():  # a similarity conv S learns predsim's term
        z = get(signals, readout.reads)
        out[name] = conv.kernel_delta(z, errors.units[name], (3, 3, z.shape[-1], z.shape[-1]),
                                      padding=1)
    for name, decoder in graph.decoders.items():  # a decoder learns its reconstruction
        z = conv.upsample(get(signals, decoder.reads), decoder.factor)
        out[name] = conv.kernel_delta(z, errors.units[name], decoder.shape, padding=1)
    for name, synapse in graph.synapses.items():  # its synapse: the same delta (KP)
        if synapse.kind == "upconv" or synapse.source[1] in sims:
            delta = out[synapse.source[1]]
            out[name] = jnp.zeros(synapse.shape) if rule == "fixed" else gamma * delta
    return out


def init_feedback(key: jax.Array, wiring, signals: Any, params: dict, *,
                  activation: Any = None, feedback_init: str | None = None,
                  feedback_scale: float = 1.0, mirror_samples: float = 0.0
                  ) -> dict[str, jax.Array]:
    """The error synapses of `wiring` (a `Wiring`) on a model whose forward gave `signals`
    (arrays or shapes) for `params`: random (`init_synapses`), then, with
    `mirror_samples` > 0, the synapses that mirror a layer started at its weight-mirror
    estimate from that many noise samples per fan-in unit (`weight_mirror`). `Wiring.init`
    calls this. A rule reads synapses; it does not make them, as an optimizer does not make
    parameters."""
    phi = get_activation(activation) if activation is not None else None
    graph = build(wiring, signals, params, phi)
    synapses = init_synapses(key, graph, feedback_init, feedback_scale)
    if mirror_samples:
        synapses = weight_mirror(jax.random.fold_in(key, 0x5EED), graph, signals, params,
                                 synapses, mirror_samples)
    return synapses


def init_synapses(key: jax.Array, graph: Graph, scheme: str | None = None,
                  scale: float = 1.0) -> dict[str, jax.Array]:
    """Random error synapses of the graph: std = scale * sqrt(v(fan_in)).

    Schemes (docs/algorithm.md, "Initialisation"): "unit": v = 1; "he":
    2 / fan_in; "lecun": 1 / fan_in. fan_in is the first dimension of a matrix and
    H * W * C_in of a conv kernel. None takes the graph's family default.
    """
    scheme = scheme or graph.feedback_init
    variance = {"unit": lambda fan_in: 1.0,
                "he": lambda fan_in: 2.0 / fan_in, "lecun": lambda fan_in: 1.0 / fan_in}
    if scheme == "lra_e":
        raise ValueError(RENAMED_INIT)
    if scheme not in variance:
        raise ValueError(f"Unknown feedback init {scheme!r}; choose one of {FEEDBACK_INITS}.")
    out = {}
    for name, r in graph.readouts.items():
        if r.conv:  # A and A_back at zero; K (He) with its synapse: below
            out[name] = jnp.zeros(r.shape)
            out[f"{name}_back"] = jnp.zeros(r.shape[::-1])
            continue
        if not r.classes:
            out[name] = jnp.zeros(r.shape)
            continue
        # A hidden layer needs a random A; its pool synapse starts as A^T (one draw for
        # both, then transposed deltas keep them so). A_out and A_back start at zero.
        std = (2.0 / r.shape[0]) ** 0.5
        out[name] = std * jax.random.normal(jax.random.fold_in(key, 7919 + len(out)), r.shape)
        out[f"{name}_out"] = jnp.zeros((r.shape[1], r.classes))
        out[f"{name}_back"] = jnp.zeros((r.classes, r.shape[1]))
    sims = {similarity_key(r) for r in graph.readouts.values() if r.sim}
    regressed = {s for unit in graph.units.values() if unit.teach or unit.perturb
                 for s in drives(unit)}
    for name, decoder in graph.decoders.items():  # D and its synapse start at zero
        out[name] = jnp.zeros(decoder.shape)
    for name, synapse in graph.synapses.items():
        if synapse.kind == "identity":
            continue  # no parameters
        shape = synapse.shape
        readout = graph.readouts.get(synapse.source[1])
        if synapse.kind == "upconv":
            out[name] = jnp.zeros(shape)
            continue
        if readout is not None and readout.conv:
            # The readout's conv K needs a random start (He); the synapse that carries its
            # units' error on starts as K (one draw), then the same deltas keep them so.
            std = (2.0 / math.prod(shape[:-1])) ** 0.5
            out[f"{readout.name}_conv"] = std * jax.random.normal(
                jax.random.fold_in(key, 7919 + synapse.init_index), shape)
            out[name] = jnp.copy(out[f"{readout.name}_conv"])
            continue
        if synapse.source[1] in sims:
            # A similarity conv S needs a random start (He); its synapse starts as S (one
            # draw for both), then the same deltas keep them equal.
            std = (2.0 / math.prod(shape[:-1])) ** 0.5
            out[synapse.source[1]] = std * jax.random.normal(
                jax.random.fold_in(key, 7919 + synapse.init_index), shape)
            out[name] = jnp.copy(out[synapse.source[1]])  # its own buffer (donated apart)
            continue
        if readout is not None and readout.classes:
            out[name] = out[readout.name].T
            continue
        if readout is not None or name in regressed:
            # Zero like its readout: the two get transposed deltas and the same optimizer,
            # so the synapse stays the readout's transpose without reading it. A regressed
            # (or probed) skip predicts nothing until its teacher (probe) has taught it.
            out[name] = jnp.zeros(shape)
            continue
        fan_in = math.prod(shape[:-1]) if len(shape) == 4 else shape[0]
        std = scale * variance[scheme](fan_in) ** 0.5
        out[name] = std * jax.random.normal(jax.random.fold_in(key, synapse.init_index), shape)
    return out


def twins(graph: Graph) -> dict[str, tuple[tuple, bool]]:
    """{feedback key: (the path of its twin in {"params", "feedback"}, transposed)}: the
    entries whose delta under the Kolen-Pollack rule with gamma 1 is exactly another entry's
    delta (or its transpose): a synapse mirroring a forward kernel, a readout's synapses
    (A^T, A_back, a conv head's K, a similarity conv's S, a decoder's D). An optimizer can
    keep one set of moments for each pair (`transforms.scale_by_adam_shared`)."""
    sims = {similarity_key(r) for r in graph.readouts.values() if r.sim}
    out = {}
    for name, s in graph.synapses.items():
        layer = mirrored_layer(graph, s) if s.kind != "identity" else None
        readout = graph.readouts.get(s.source[1])
        if layer is not None:
            out[name] = (("params", layer.name, *layer.kernel), s.kind in ("pool", "dense"))
        elif readout is not None:
            out[name] = (("feedback", f"{readout.name}_conv"), False) if readout.conv else (
                ("feedback", readout.name), True)
        elif s.source[1] in sims or s.kind == "upconv":
            out[name] = (("feedback", s.source[1]), False)
    for name, r in graph.readouts.items():
        if r.classes:
            out[f"{name}_back"] = (("feedback", f"{name}_out"), True)
        elif r.conv:
            out[f"{name}_back"] = (("feedback", name), True)
    return out


def mirrored_layer(graph: Graph, synapse: Synapse):
    """The forward layer whose transpose the synapse stands in for, or None: a conv
    synapse carrying that conv layer's error, a pool synapse carrying the error of a
    dense layer's unit (the head) back through global average pooling, or a dense synapse
    carrying a dense layer's unit error to that layer's input (an MLP's adjacent synapse,
    the Kolen-Pollack chain's W^T)."""
    if synapse.kind == "conv" and synapse.source[0] == "layer":
        return graph.layers[synapse.source[1]]
    if synapse.kind == "dense" and synapse.source[0] == "unit":
        for layer in graph.layers.values():
            if (layer.kind == "dense" and layer.unit == synapse.source[1]
                    and layer.input == synapse.reads and layer.norm is None
                    and layer.kernel_shape == synapse.shape[::-1]):
                return layer
        return None
    if synapse.kind == "pool":
        for layer in graph.layers.values():
            if (layer.kind == "dense" and layer.unit == synapse.source[1]
                    and layer.kernel_shape == synapse.shape[::-1]):
                return layer
    return None


def weight_mirror(key: jax.Array, graph: Graph, signals: dict, params: dict,
                  synapses: dict[str, jax.Array], samples: float) -> dict[str, jax.Array]:
    """Synapses that mirror a forward layer, started at that layer's weight-mirror estimate.

    A weight mirror (Akrout et al., "Deep learning without weight transport", NeurIPS
    2019) drives a layer's input with white noise xi ~ N(0, 1), reads the layer's linear
    response y = xi W (a conv: conv(xi, W), before BatchNorm; no bias) and learns its
    synapse by the correlation Kolen-Pollack uses, corr(xi, y). In expectation that is W
    times the number of output positions each kernel tap sees, so dividing by that count
    gives an unbiased estimate of W from activity alone. `samples` noise vectors per fan-in
    unit (n inputs with n * output positions >= samples * fan_in) make its relative error
    about 1 / sqrt(samples). Kolen-Pollack then keeps a synapse minus its layer shrinking
    by the shared weight decay (docs/algorithm.md, "Initialisation").

    Mirrored: conv synapses that carry one conv layer's error (inside every block; inside
    every stage with module "stage"; everywhere in the Kolen-Pollack chain, rule kp; a
    regressed skip's teachers), pool synapses carrying the head's
    error (they stand for the head's kernel, transposed) and dense synapses carrying a
    dense layer's error to its input (an MLP's adjacent synapses). Other synapses (skips
    from further up) keep their random init. Raises ValueError when the graph has no
    mirrored synapse (DFA's direct skips on a ResNet).
    """
    out = dict(synapses)
    mirrored = {name: layer for name, s in graph.synapses.items()
                if (layer := mirrored_layer(graph, s)) is not None}
    if not mirrored:
        raise ValueError("weight_mirror needs synapses that mirror a forward layer (conv "
                         "or pool synapses); this graph has none.")
    logging.info("Weight mirror: estimating %d synapses from their layers' response to "
                 "noise (%g samples per fan-in unit; minutes for large inputs on a CPU).",
                 len(mirrored), samples)
    start = last_report = time.perf_counter()
    for done, (name, layer) in enumerate(mirrored.items(), 1):
        synapse = graph.synapses[name]
        kernel = get(params[layer.name], layer.kernel)
        in_shape = tuple(get(signals, layer.input).shape[1:])
        noise_key = jax.random.fold_in(key, synapse.init_index)
        if synapse.kind in ("pool", "dense"):
            out[name] = dense_mirror(noise_key, kernel, samples)
        else:
            if synapse.geometry != layer.geometry:
                raise ValueError(f"synapse {name!r} does not have the geometry of layer "
                                 f"{layer.name!r}, which it mirrors.")
            strides, padding = layer.geometry
            out[name] = conv_mirror(noise_key, kernel, samples, in_shape, strides, padding)
        jax.block_until_ready(out[name])  # progress counts finished work, not dispatched
        now = time.perf_counter()
        if now - last_report >= _MIRROR_REPORT_S and done < len(mirrored):
            last_report = now
            logging.info("Weight mirror: %d/%d synapses in %.0f s.", done, len(mirrored),
                         now - start)
    logging.info("Weight mirror: done in %.1f s.", time.perf_counter() - start)
    return out


_MIRROR_CHUNK = 1 << 24  # noise elements drawn at once (64 MiB in float32)
_MIRROR_REPORT_S = 30.0  # a progress line at most this often (full-width nets on a CPU)


def conv_mirror(key: jax.Array, kernel: jax.Array, samples: float,
                in_shape: tuple[int, ...], strides: int, padding: int,
                chunk_elements: int = _MIRROR_CHUNK) -> jax.Array:
    """The weight-mirror estimate of one conv kernel from `samples` noise patches per
    fan-in unit (see `weight_mirror`), at the conv's input shape (H, W, C_in), stride and
    padding. The noise is drawn `chunk_elements` at a time, so the largest layers need no
    more memory than the smallest. Taps that never overlap the input (small maps) are 0.
    Cost: about 2 * samples * fan_in^2 * C_out flops."""
    forward = functools.partial(conv.conv, strides=strides, padding=padding)
    out_shape = jax.eval_shape(forward, jax.ShapeDtypeStruct((1, *in_shape), kernel.dtype),
                               kernel).shape
    fan_in = math.prod(kernel.shape[:-1])
    n = max(1, math.ceil(samples * fan_in / math.prod(out_shape[1:3])))
    per_chunk = max(1, min(n, chunk_elements // math.prod(in_shape)))
    chunks = math.ceil(n / per_chunk)
    rng = _numpy_rng(key)  # numpy draws the noise: no RNG kernel to compile per shape
    total = sum(_mirror_chunk(rng.standard_normal((per_chunk, *in_shape), np.float32).astype(
        kernel.dtype), kernel, strides, padding) for _ in range(chunks))
    counts = _tap_counts(kernel.shape, in_shape, out_shape, strides, padding)
    # A tap that sees no input position (a 3x3 kernel on a 1x1 map, a strided conv's
    # padded edge) never acts, forward or transposed: its weight is unobservable, and 0
    # makes the synapse act exactly like the kernel. Dividing by its count of 0 gave NaN.
    return jnp.where(counts > 0, total / chunks / np.maximum(counts, 1), 0.0).astype(
        kernel.dtype)


def dense_mirror(key: jax.Array, kernel: jax.Array, samples: float,
                 chunk_elements: int = _MIRROR_CHUNK) -> jax.Array:
    """The weight-mirror estimate of a dense kernel (fan_in, fan_out), transposed:
    corr(y, xi) = (xi W)^T xi / n over n = samples * fan_in noise inputs xi, drawn
    `chunk_elements` at a time (one numpy stream, so the chunking does not change it)."""
    fan_in = kernel.shape[0]
    n = max(1, math.ceil(samples * fan_in))
    per_chunk = max(1, min(n, chunk_elements // fan_in))
    rng = _numpy_rng(key)
    total = None
    for start in range(0, n, per_chunk):
        xi = jnp.asarray(rng.standard_normal((min(per_chunk, n - start), fan_in), np.float32),
                         kernel.dtype)
        part = (xi @ kernel).T @ xi
        total = part if total is None else total + part
    return total / n


def _tap_counts(kernel_shape, in_shape, out_shape, strides, padding) -> np.ndarray:
    """How many output positions each kernel tap sees inside the input (fewer at the
    padded borders): the expected corr(xi, conv(xi, W)) is W times this."""
    def per_axis(size, taps, outputs):
        rows = np.arange(outputs)[:, None] * strides + np.arange(taps)[None, :] - padding
        return np.sum((rows >= 0) & (rows < size), axis=0)
    counts = np.outer(per_axis(in_shape[0], kernel_shape[0], out_shape[1]),
                      per_axis(in_shape[1], kernel_shape[1], out_shape[2]))
    return counts[:, :, None, None].astype(np.float32)


def _numpy_rng(key: jax.Array) -> np.random.Generator:
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


@functools.partial(jax.jit, static_argnums=(2, 3))
def _mirror_chunk(xi, kernel, strides, padding):
    """corr(xi, conv(xi, W)) / N for N noise inputs xi."""
    y = conv.conv(xi, kernel, strides=strides, padding=padding)
    return conv.kernel_delta(xi, y, kernel.shape, strides=strides, padding=padding)

