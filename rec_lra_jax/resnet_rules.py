"""rec-LRA for ResNets: depth-2 recursion over residual blocks (SPEC "ResNets").

Depth 1: every block output u_b takes its displacement d_b from the output error e_L
through a skip source ("head": through the head at the last block, then block to block
through conv-transpose synapses; "channel": a (K, C) synapse broadcast over space;
"dense": a (K, H*W*C) synapse). Depth 2: inside a block, each layer takes its displacement
from the error of the layer directly above it, through a conv-transpose synapse shaped
like that layer's kernel. Targets ybar = relu(pre - beta d), errors e = z - ybar; a conv's
error is its BatchNorm output's error (option "scaled": times gamma_bn / sigma_batch);
the shortcut is held fixed, so the residual branch closes the whole displacement.

Error synapses (the feedback pytree) are keyed by the layer whose output they drive:
"stem", "block_XX" (block output), "block_XX_conv1" (and "_conv2" in a Bottleneck).

Status: work in progress (issue 3), not wired into the training loop. The sweep's
structure is tested, but on a toy set that backprop fits in 3 epochs a width-4 ResNet-18
trained with it stayed near chance after 60 epochs. With He-scaled synapses the errors
shrink by about beta per block-to-block hop of the "head" source, to ~1e-11 at the first
blocks, below Adam's epsilon. Larger synapse scales (x10, x30) did not fix learning either.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rec_lra_jax import conv
from rec_lra_jax.resnet import STAGES, ResNet
from rec_lra_jax.rules import UpdateRule

SKIP_SOURCES = ("head", "channel", "dense")
BN_ERRORS = ("output", "scaled")


def _inner_layers(model: ResNet) -> tuple[str, ...]:
    return ("conv1", "conv2") if STAGES[model.depth][0] == "basic" else ("conv1", "conv2", "conv3")


def _geometry(signals: dict, kernel_size: int) -> dict[str, int]:
    """Stride and padding of a ResNet conv from its input and output maps."""
    strides = 1 if signals["input"].shape[1] == signals["conv"].shape[1] else 2
    return {"strides": strides, "padding": (kernel_size - 1) // 2}


def _block_skip_kernel(model: ResNet) -> int:
    """Kernel size of the block-to-block synapse: conv1's (3) in BasicBlocks, 1 otherwise."""
    return 3 if STAGES[model.depth][0] == "basic" else 1


def init_resnet_feedback(key: jax.Array, model: ResNet, params: dict, x: jax.Array, *,
                         skip_source: str = "head", scale: float = 1.0) -> dict[str, jax.Array]:
    """Error synapses for `model` (He-style scale: std = scale * sqrt(2 / fan_in))."""
    if skip_source not in SKIP_SOURCES:
        raise ValueError(f"Unknown skip source {skip_source!r}; choose one of {SKIP_SOURCES}.")
    acts, _ = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x, train=False))
    classes = params["head"]["kernel"].shape[-1]
    shapes = {}
    blocks = sorted(acts["blocks"])
    for i, name in enumerate(blocks):
        block = acts["blocks"][name]
        channels = block["post"].shape[-1]
        if skip_source == "dense":
            shapes[name] = (classes, math.prod(block["post"].shape[1:]))
        elif skip_source == "channel" or i == len(blocks) - 1:
            shapes[name] = (classes, channels)
        else:  # "head": driven by the next block's output error
            k, nxt = _block_skip_kernel(model), acts["blocks"][blocks[i + 1]]["post"].shape[-1]
            shapes[name] = (k, k, channels, nxt)
        layers = _inner_layers(model)
        for lower, upper in zip(layers[:-1], layers[1:], strict=True):
            shapes[f"{name}_{lower}"] = params[f"{name}_{upper}"]["conv"]["kernel"].shape
    k = _block_skip_kernel(model)
    shapes["stem"] = (k, k, acts["stem"]["post"].shape[-1],
                      acts["blocks"][blocks[0]]["post"].shape[-1])
    feedback = {}
    for i, (name, shape) in enumerate(sorted(shapes.items())):
        fan_in = math.prod(shape[:-1]) if len(shape) == 4 else shape[0]
        std = scale * (2.0 / fan_in) ** 0.5
        feedback[name] = std * jax.random.normal(jax.random.fold_in(key, i), shape)
    return feedback


def _target_error(z: jax.Array, pre: jax.Array, d: jax.Array, beta: float) -> jax.Array:
    """e = z - relu(pre - beta d)."""
    return z - jax.nn.relu(pre - beta * d)


def _conv_deltas(signals: dict, e: jax.Array, layer_params: dict, bn_error: str) -> dict:
    """Local deltas of one conv (+BN) layer whose BN output has error e."""
    kernel = layer_params["conv"]["kernel"]
    e_conv = e
    if bn_error == "scaled" and "bn" in layer_params:
        e_conv = e * layer_params["bn"]["scale"] * signals["inv_std"]
    out = {"conv": {"kernel": conv.kernel_delta(signals["input"], e_conv, kernel.shape,
                                                **_geometry(signals, kernel.shape[0]))}}
    if "bn" in layer_params:
        out["bn"] = conv.bn_affine_deltas(e, signals["xhat"])
    return out


def _kp_conv(z: jax.Array, e_src: jax.Array, shape, geometry, gamma: float) -> jax.Array:
    """KP delta of a conv-transpose synapse: the kernel delta of a conv from z to e_src."""
    return gamma * conv.kernel_delta(z, e_src, shape, **geometry)


def resnet_deltas(params: dict, feedback: dict, acts: dict, labels: jax.Array, *,
                  model: ResNet, beta: float = 0.1, gamma: float = 1.0,
                  skip_source: str = "head", bn_error: str = "output") -> dict[str, Any]:
    """One rec-LRA sweep over a ResNet's forward signals; returns {"params", "feedback"}."""
    if bn_error not in BN_ERRORS:
        raise ValueError(f"Unknown bn_error {bn_error!r}; choose one of {BN_ERRORS}.")
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
        if skip_source == "dense":
            d = (e_out @ E).reshape(u.shape)
            d_feedback[name] = gamma * e_out.T @ u.reshape(batch, -1) / batch
        elif skip_source == "channel":  # broadcast over space; KP uses its adjoint (sum)
            d = jnp.broadcast_to((e_out @ E)[:, None, None, :], u.shape)
            d_feedback[name] = gamma * e_out.T @ jnp.sum(u, axis=(1, 2)) / batch
        elif e_above is None:  # "head" at the last block: the adjoint of average pooling
            d = conv.avg_pool_adjoint(e_out @ E, u.shape[1:3])
            d_feedback[name] = gamma * e_out.T @ jnp.mean(u, axis=(1, 2)) / batch
        else:
            upper = acts["blocks"][blocks[i + 1]]
            geometry = {"strides": 1 if upper["post"].shape[1] == u.shape[1] else 2,
                        "padding": (E.shape[0] - 1) // 2}
            d = conv.transpose_displacement(e_above, E, u.shape, **geometry)
            d_feedback[name] = _kp_conv(u, e_above, E.shape, geometry, gamma)
        e_block = e = _target_error(u, block["pre"], d, beta)
        # Depth 2: inside the block, top layer first; its error is the block's.
        for j in range(len(layers) - 1, -1, -1):
            layer = f"{name}_{layers[j]}"
            signals = block[layers[j]]
            d_params[layer] = _conv_deltas(signals, e, params[layer], bn_error)
            if j == 0:
                break
            lower = block[layers[j - 1]]
            E_in = feedback[f"{name}_{layers[j - 1]}"]
            geometry = _geometry(signals, E_in.shape[0])
            z_lower = jax.nn.relu(lower["bn"])
            d_in = conv.transpose_displacement(e, E_in, z_lower.shape, **geometry)
            d_feedback[f"{name}_{layers[j - 1]}"] = _kp_conv(z_lower, e, E_in.shape, geometry,
                                                             gamma)
            e = _target_error(z_lower, lower["bn"], d_in, beta)
        if "proj" in block:  # the learnable shortcut sees the block's error
            d_params[f"{name}_proj"] = _conv_deltas(block["proj"], e_block,
                                                    params[f"{name}_proj"], bn_error)
        e_above = e_block
    d_params["stem"], d_feedback["stem"] = _stem_deltas(
        params, feedback, acts, e_above, model=model, beta=beta, gamma=gamma,
        bn_error=bn_error)
    return {"params": d_params, "feedback": d_feedback}


def _stem_deltas(params, feedback, acts, e_first, *, model, beta, gamma, bn_error):
    """The stem's target from the first block's error (through the max-pool if any)."""
    stem = acts["stem"]
    u0 = stem.get("pooled", stem["post"])
    E = feedback["stem"]
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
    e = _target_error(stem["post"], stem["bn"], d, beta)
    return _conv_deltas(stem, e, params["stem"], bn_error), d_feedback


def resnet_rec_lra(*, beta: float = 0.1, gamma: float = 1.0, skip_source: str = "head",
                   bn_error: str = "output", feedback_scale: float = 1.0) -> UpdateRule:
    """rec-LRA (depth 2) for `resnet.ResNet`; deltas(...) also returns new batch statistics.

    init(key, params, *, model, x) -> feedback (it needs the model and an input to size the
    synapses, unlike the MLP rules' init(key, params));
    deltas(params, feedback, x, labels, *, model, batch_stats) -> (deltas, aux) with
    aux = {"logits", "batch_stats"}.
    """

    def init_fn(key, params, *, model, x):
        return init_resnet_feedback(key, model, params, x, skip_source=skip_source,
                                    scale=feedback_scale)

    def deltas_fn(params, feedback, x, labels, *, model, batch_stats=None):
        variables = {"params": params}
        if batch_stats is not None:
            variables["batch_stats"] = batch_stats
        acts, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        deltas = resnet_deltas(params, feedback, acts, labels, model=model, beta=beta,
                               gamma=gamma, skip_source=skip_source, bn_error=bn_error)
        return deltas, {"logits": acts["logits"], "batch_stats": updates.get("batch_stats")}

    return UpdateRule(init_fn, deltas_fn)
