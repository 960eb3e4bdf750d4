"""rec-LRA for ResNets: depth-2 recursion over residual blocks (SPEC "ResNets").

Depth 1: every module output (the stem and each block output u_b) takes its displacement
d_b from the output error e_L through a skip source: "dense" (a (K, H*W*C) synapse, the
default), "channel" (a (K, C) synapse broadcast over space) or the "head" chain (block to
block through conv-transpose synapses). With head_last (default) the last block is driven
through the head: d = avgpool^T(e_L E_head). Depth 2: inside a block, each layer takes its
displacement from the conv error of the layer directly above it, through a conv-transpose
synapse shaped like that layer's kernel. Targets ybar = relu(pre - beta d), errors
e = z - ybar. A conv's error is its BatchNorm output's error taken through that BatchNorm's
own Jacobian ("jacobian", default: removes the per-channel shift and scale that BN
cancels; without it the convs do not learn), or "output" / "scaled" (SPEC's options).
The shortcut is held fixed, so the residual branch closes the whole displacement.

Error synapses (the feedback pytree) are keyed by the layer whose output they drive:
"stem", "block_XX" (block output), "block_XX_conv1" (and "_conv2" in a Bottleneck). They
learn by Kolen-Pollack: each synapse's delta is the correlation of the activity it reads
from with the error it carries.

The same sweep with depth=1, error_mode="gradient" and frozen synapses is DFA
(`resnet_dfa`); FA, sign symmetry and backprop are autodiff through a model whose layers'
vjps use feedback kernels (`resnet_autodiff`, `feedback_ops`).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from rec_lra_jax import conv
from rec_lra_jax.resnet import STAGES, ResNet
from rec_lra_jax.rules import UpdateRule

SKIP_SOURCES = ("dense", "channel", "head")
BN_ERRORS = ("jacobian", "output", "scaled")
DEPTHS = (1, 2)
ERROR_MODES = ("target", "gradient")


def _inner_layers(model: ResNet) -> tuple[str, ...]:
    return ("conv1", "conv2") if STAGES[model.depth][0] == "basic" else ("conv1", "conv2", "conv3")


def _geometry(signals: dict, kernel_size: int) -> dict[str, int]:
    """Stride and padding of a ResNet conv from its input and output maps."""
    strides = 1 if signals["input"].shape[1] == signals["conv"].shape[1] else 2
    return {"strides": strides, "padding": (kernel_size - 1) // 2}


def _block_skip_kernel(model: ResNet) -> int:
    """Kernel size of the block-to-block synapse: conv1's (3) in BasicBlocks, 1 otherwise."""
    return 3 if STAGES[model.depth][0] == "basic" else 1


def _direct_shape(u_shape: tuple[int, ...], classes: int, skip_source: str) -> tuple[int, int]:
    return (classes, math.prod(u_shape[1:]) if skip_source == "dense" else u_shape[-1])


def init_resnet_feedback(key: jax.Array, model: ResNet, params: dict, x: jax.Array, *,
                         skip_source: str = "dense", scale: float = 1.0, head_last: bool = True,
                         depth: int = 2) -> dict[str, jax.Array]:
    """Error synapses for `model` (He-style scale: std = scale * sqrt(2 / fan_in))."""
    _check_options(skip_source=skip_source, depth=depth)
    acts, _ = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x, train=False))
    classes = params["head"]["kernel"].shape[-1]
    shapes = {}
    blocks = sorted(acts["blocks"])
    layers = _inner_layers(model)
    for i, name in enumerate(blocks):
        u_shape = acts["blocks"][name]["post"].shape
        if head_last and i == len(blocks) - 1:
            shapes[name] = (classes, u_shape[-1])
        elif skip_source in ("dense", "channel"):
            shapes[name] = _direct_shape(u_shape, classes, skip_source)
        else:  # "head" chain: driven by the next block's output error
            k, nxt = _block_skip_kernel(model), acts["blocks"][blocks[i + 1]]["post"].shape[-1]
            shapes[name] = (k, k, u_shape[-1], nxt)
        for lower, upper in zip(layers[:-1], layers[1:], strict=True):
            if depth == 1:  # every layer straight from e_L (DFA-like)
                z_shape = acts["blocks"][name][lower]["bn"].shape
                shapes[f"{name}_{lower}"] = _direct_shape(z_shape, classes, skip_source)
            else:
                shapes[f"{name}_{lower}"] = params[f"{name}_{upper}"]["conv"]["kernel"].shape
    u0 = acts["stem"].get("pooled", acts["stem"]["post"])
    if skip_source in ("dense", "channel"):
        shapes["stem"] = _direct_shape(u0.shape, classes, skip_source)
    else:
        k = _block_skip_kernel(model)
        shapes["stem"] = (k, k, u0.shape[-1], acts["blocks"][blocks[0]]["post"].shape[-1])
    feedback = {}
    for i, (name, shape) in enumerate(sorted(shapes.items())):
        fan_in = math.prod(shape[:-1]) if len(shape) == 4 else shape[0]
        std = scale * (2.0 / fan_in) ** 0.5
        feedback[name] = std * jax.random.normal(jax.random.fold_in(key, i), shape)
    return feedback


def _check_options(*, skip_source=None, bn_error=None, depth=None, error_mode=None) -> None:
    for value, allowed, what in ((skip_source, SKIP_SOURCES, "skip source"),
                                 (bn_error, BN_ERRORS, "bn_error"), (depth, DEPTHS, "depth"),
                                 (error_mode, ERROR_MODES, "error mode")):
        if value is not None and value not in allowed:
            raise ValueError(f"Unknown {what} {value!r}; choose one of {allowed}.")


def _target_error(z: jax.Array, pre: jax.Array, d: jax.Array, beta: float,
                  mode: str = "target") -> jax.Array:
    """"target": e = z - relu(pre - beta d) (LRA); "gradient": e = d * 1[pre > 0] (DFA/FA)."""
    if mode == "gradient":
        return d * (pre > 0)
    return z - jax.nn.relu(pre - beta * d)


def _conv_error(signals: dict, e: jax.Array, layer_params: dict, bn_error: str) -> jax.Array:
    """The error at a conv's output given the error e at its BatchNorm output.

    "output": e itself; "scaled": e * gamma_bn / sigma_batch; "jacobian": e through the
    layer's own BatchNorm Jacobian, (gamma / sigma) (e - mean(e) - x_hat mean(e x_hat)), which
    removes the per-channel shift and scale components that BatchNorm cancels. All three use
    only this layer's own statistics and scale (like a ReLU's mask): no other layer's weights.
    """
    if "xhat" not in signals or bn_error == "output":
        return e
    gain = signals["inv_std"]
    if "bn" in layer_params:
        gain = gain * layer_params["bn"]["scale"]
    if bn_error == "scaled":
        return e * gain
    axes = tuple(range(e.ndim - 1))
    xhat = signals["xhat"]
    centred = e - jnp.mean(e, axis=axes) - xhat * jnp.mean(e * xhat, axis=axes)
    return centred * gain


def _conv_deltas(signals: dict, e: jax.Array, layer_params: dict,
                 bn_error: str) -> tuple[dict, jax.Array]:
    """Local deltas of one conv (+BN) layer whose BN output has error e, and its conv error."""
    kernel = layer_params["conv"]["kernel"]
    e_conv = _conv_error(signals, e, layer_params, bn_error)
    out = {"conv": {"kernel": conv.kernel_delta(signals["input"], e_conv, kernel.shape,
                                                **_geometry(signals, kernel.shape[0]))}}
    if "bn" in layer_params:
        out["bn"] = conv.bn_affine_deltas(e, signals["xhat"])
    return out, e_conv


def _kp_conv(z: jax.Array, e_src: jax.Array, shape, geometry, gamma: float) -> jax.Array:
    """KP delta of a conv-transpose synapse: the kernel delta of a conv from z to e_src."""
    return gamma * conv.kernel_delta(z, e_src, shape, **geometry)


def resnet_deltas(params: dict, feedback: dict, acts: dict, labels: jax.Array, *,
                  model: ResNet, beta: float = 0.1, gamma: float = 1.0,
                  skip_source: str = "dense", bn_error: str = "jacobian",
                  head_last: bool = True, depth: int = 2,
                  error_mode: str = "target") -> dict[str, Any]:
    """One top-down sweep over a ResNet's forward signals; returns {"params", "feedback"}.

    depth=2 is rec-LRA (block outputs from e_L, inner layers from the layer above);
    depth=1 drives every layer straight from e_L (with error_mode="gradient" and fixed
    synapses, that is DFA). gamma=0 freezes the synapses' deltas.
    """
    _check_options(skip_source=skip_source, bn_error=bn_error, depth=depth,
                   error_mode=error_mode)
    batch = labels.shape[0]
    e_out = jax.nn.softmax(acts["logits"]) - labels
    pooled = acts["head"]["input"]
    d_params = {"head": {"kernel": pooled.T @ e_out / batch, "bias": jnp.mean(e_out, axis=0)}}
    d_feedback = {}
    layers = _inner_layers(model)
    blocks = sorted(acts["blocks"])
    e_above = None  # output error of the block above (the "head" source chain)
    for i in range(len(blocks) - 1, -1, -1):
        name, block = blocks[i], acts["blocks"][blocks[i]]
        u = block["post"]
        E = feedback[name]
        if head_last and i == len(blocks) - 1:  # through the head: avg-pool adjoint
            d = conv.avg_pool_adjoint(e_out @ E, u.shape[1:3])
            d_feedback[name] = gamma * e_out.T @ jnp.mean(u, axis=(1, 2)) / batch
        elif skip_source in ("dense", "channel"):
            d, d_feedback[name] = _direct_displacement(e_out, E, u, skip_source, gamma)
        else:  # "head" chain: from the next block's output error, conv-transpose synapse
            upper = acts["blocks"][blocks[i + 1]]
            geometry = {"strides": 1 if upper["post"].shape[1] == u.shape[1] else 2,
                        "padding": (E.shape[0] - 1) // 2}
            d = conv.transpose_displacement(e_above, E, u.shape, **geometry)
            d_feedback[name] = _kp_conv(u, e_above, E.shape, geometry, gamma)
        e_block = e = _target_error(u, block["pre"], d, beta, error_mode)
        # Inside the block, top layer first; the top layer's error is the block's.
        for j in range(len(layers) - 1, -1, -1):
            layer = f"{name}_{layers[j]}"
            signals = block[layers[j]]
            d_params[layer], e_conv = _conv_deltas(signals, e, params[layer], bn_error)
            if j == 0:
                break
            lower = block[layers[j - 1]]
            key = f"{name}_{layers[j - 1]}"
            z_lower = jax.nn.relu(lower["bn"])
            if depth == 1:
                d_in, d_feedback[key] = _direct_displacement(e_out, feedback[key], z_lower,
                                                             skip_source, gamma)
            else:  # depth 2: from the error of the layer above, conv-transpose synapse
                E_in = feedback[key]
                geometry = _geometry(signals, E_in.shape[0])
                d_in = conv.transpose_displacement(e_conv, E_in, z_lower.shape, **geometry)
                d_feedback[key] = _kp_conv(z_lower, e_conv, E_in.shape, geometry, gamma)
            e = _target_error(z_lower, lower["bn"], d_in, beta, error_mode)
        if "proj" in block:  # the learnable shortcut sees the block's error
            d_params[f"{name}_proj"], _ = _conv_deltas(block["proj"], e_block,
                                                       params[f"{name}_proj"], bn_error)
        e_above = e_block
    d_params["stem"], d_feedback["stem"] = _stem_deltas(
        params, feedback, acts, e_above, e_out, beta=beta, gamma=gamma, bn_error=bn_error,
        skip_source=skip_source, error_mode=error_mode)
    return {"params": d_params, "feedback": d_feedback}


def _direct_displacement(e_out: jax.Array, E: jax.Array, u: jax.Array, skip_source: str,
                         gamma: float) -> tuple[jax.Array, jax.Array]:
    """Depth-1 displacement of a module output u straight from e_L, and its synapse's KP delta.

    "dense": E is (K, H*W*C); "channel": E is (K, C), broadcast over space (its KP delta
    uses the broadcast's adjoint, the spatial sum).
    """
    batch = e_out.shape[0]
    if skip_source == "dense":
        return (e_out @ E).reshape(u.shape), gamma * e_out.T @ u.reshape(batch, -1) / batch
    d = jnp.broadcast_to((e_out @ E)[:, None, None, :], u.shape)
    return d, gamma * e_out.T @ jnp.sum(u, axis=(1, 2)) / batch


def _stem_deltas(params, feedback, acts, e_first, e_out, *, beta, gamma, bn_error,
                 skip_source, error_mode):
    """The stem's target: from e_L like any module output ("dense", "channel"), or from the
    first block's error ("head" chain); carried through the max-pool transpose if any."""
    stem = acts["stem"]
    u0 = stem.get("pooled", stem["post"])
    E = feedback["stem"]
    if skip_source in ("dense", "channel"):
        d, d_feedback = _direct_displacement(e_out, E, u0, skip_source, gamma)
    else:
        first = acts["blocks"][min(acts["blocks"])]
        geometry = {"strides": 1 if first["post"].shape[1] == u0.shape[1] else 2,
                    "padding": (E.shape[0] - 1) // 2}
        d = conv.transpose_displacement(e_first, E, u0.shape, **geometry)
        d_feedback = _kp_conv(u0, e_first, E.shape, geometry, gamma)
    if "pooled" in stem:
        # Max-pool transpose: scatter each displacement to its window's argmax. This is the
        # pool's own (parameter-free, local) adjoint, not a derivative through the network.
        pool = lambda z: nn.max_pool(z, (3, 3), (2, 2), ((1, 1), (1, 1)))
        d = jax.vjp(pool, stem["post"])[1](d)[0]
    e = _target_error(stem["post"], stem["bn"], d, beta, error_mode)
    return _conv_deltas(stem, e, params["stem"], bn_error)[0], d_feedback


def resnet_rec_lra(*, beta: float = 0.1, gamma: float = 1.0, skip_source: str = "dense",
                   bn_error: str = "jacobian", feedback_scale: float = 1.0,
                   head_last: bool = True, depth: int = 2,
                   error_mode: str = "target") -> UpdateRule:
    """rec-LRA (depth 2) for `resnet.ResNet`; deltas(...) also returns new batch statistics.

    init(key, params, *, model, x) -> feedback (the model and an input size the synapses);
    deltas(params, feedback, x, labels, *, model, batch_stats) -> (deltas, aux) with
    aux = {"logits", "batch_stats"}. Options are SPEC's interpretation choices:
    skip_source ("dense" | "channel" | "head" chain), bn_error ("jacobian" | "output" |
    "scaled"), head_last (the last block through the head), feedback_scale, depth (1 | 2),
    error_mode ("target" | "gradient"), beta and gamma (KP rate; 0 freezes the synapses).
    """
    _check_options(skip_source=skip_source, bn_error=bn_error, depth=depth,
                   error_mode=error_mode)

    def init_fn(key, params, *, model, x):
        return init_resnet_feedback(key, model, params, x, skip_source=skip_source,
                                    scale=feedback_scale, head_last=head_last, depth=depth)

    def deltas_fn(params, feedback, x, labels, *, model, batch_stats=None):
        acts, batch_stats = _forward(model, params, batch_stats, x)
        deltas = resnet_deltas(params, feedback, acts, labels, model=model, beta=beta,
                               gamma=gamma, skip_source=skip_source, bn_error=bn_error,
                               head_last=head_last, depth=depth, error_mode=error_mode)
        return deltas, {"logits": acts["logits"], "batch_stats": batch_stats}

    return UpdateRule(init_fn, deltas_fn)


def resnet_dfa(*, feedback_scale: float = 1.0, skip_source: str = "dense") -> UpdateRule:
    """Direct feedback alignment on a ResNet: every layer's error is (e_L B_l) * 1[h > 0],
    through its own BatchNorm Jacobian, with fixed random B_l (Nokland 2016)."""
    return resnet_rec_lra(gamma=0.0, skip_source=skip_source, feedback_scale=feedback_scale,
                          head_last=False, depth=1, error_mode="gradient")


def _forward(model: ResNet, params, batch_stats, x, feedback=None):
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    if feedback:
        variables["feedback"] = feedback
    acts, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return acts, updates.get("batch_stats", batch_stats)


def resnet_autodiff(backward: str = "exact") -> UpdateRule:
    """Autodiff through a ResNet built with `backward`: "exact" is backprop, "fa" feedback
    alignment (fixed random kernels), "sign" sign symmetry (uSF). The model must be built
    with the same `backward` (`resnet.resnet(..., backward=...)`)."""

    def init_fn(key, params, *, model, x):
        del params
        if backward != "fa":
            return {}
        return model.init(key, x, train=False)["feedback"]

    def deltas_fn(params, feedback, x, labels, *, model, batch_stats=None):
        if model.backward != backward:
            raise ValueError(f"This rule needs a model built with backward={backward!r}; "
                             f"got {model.backward!r}.")

        def loss_fn(p):
            acts, stats = _forward(model, p, batch_stats, x, feedback)
            return jnp.mean(optax.softmax_cross_entropy(acts["logits"], labels)), (acts, stats)

        grads, (acts, stats) = jax.grad(loss_fn, has_aux=True)(params)
        zeros = jax.tree.map(jnp.zeros_like, feedback)
        return {"params": grads, "feedback": zeros}, {"logits": acts["logits"],
                                                      "batch_stats": stats}

    return UpdateRule(init_fn, deltas_fn)
