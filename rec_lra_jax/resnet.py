"""ResNets (BasicBlock / Bottleneck) whose forward exposes every conv layer's local signals.

One forward serves training and inference (`train` selects batch or running BatchNorm
statistics). Besides the logits it returns, per weight layer, what a local rule needs
(docs/algorithm.md, "Model contract"): the conv input, the conv output, the
BatchNorm-normalised x_hat, 1/sigma and gain, the BatchNorm output, and per block the
shortcut term, the block pre-activation h_b and the block output u_b = relu(h_b).

A residual net trained by rec-LRA as an optax transform (rules.py), beta scheduled:

>>> import jax, jax.numpy as jnp, optax
>>> import rec_lra_jax as rl
>>> model = rl.ResNet(depth=18, num_classes=10, width=4, stem="cifar")
>>> x, labels = jnp.ones((2, 8, 8, 3)), jnp.eye(10)[:2]
>>> variables = model.init(jax.random.key(0), x)
>>> signals, _ = model.apply(variables, x, mutable=["batch_stats"])
>>> rule = optax.inject_hyperparams(rl.rec_lra)(beta=optax.linear_schedule(0.05, 0.2, 100))
>>> feedback = rl.Wiring().init(jax.random.key(1), signals, variables["params"])
>>> trainables = {"params": variables["params"], "feedback": feedback}
>>> tx = optax.chain(rule, optax.sgd(0.1))
>>> updates, _ = tx.update(trainables, tx.init(trainables), trainables, signals=signals,
...                        labels=labels)
>>> updates["feedback"]["block_00_conv1"].shape  # conv-transpose synapse inside a block
(3, 3, 4, 4)
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rec_lra_jax import feedback_ops
from rec_lra_jax.models import FeedbackDense, feedback_variable, kernel_initializer

STAGES = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
}


def block_name(index: int) -> str:
    """Name of residual block `index` (0-based); names sort in depth order."""
    return f"block_{index:02d}"


class BatchNorm(nn.Module):
    """BatchNorm over (N, H, W) that also returns x_hat, 1/sigma and its gain scale/sigma
    (the local signals a rule needs to carry an error through it, without reading params).

    Training uses batch statistics and updates the running averages in "batch_stats";
    eval uses the running averages. With `affine=False` there is no scale or bias.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    affine: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
        channels = x.shape[-1]
        mean_var = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
        var_var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)
        if train:
            mean = jnp.mean(x, axis=(0, 1, 2))
            var = jnp.var(x, axis=(0, 1, 2))
            if not self.is_initializing():
                mean_var.value = self.momentum * mean_var.value + (1 - self.momentum) * mean
                var_var.value = self.momentum * var_var.value + (1 - self.momentum) * var
        else:
            mean, var = mean_var.value, var_var.value
        inv_std = jax.lax.rsqrt(var + self.epsilon)
        xhat = (x - mean) * inv_std
        out, gain = xhat, inv_std
        if self.affine:
            scale = self.param("scale", nn.initializers.ones, (channels,))
            out = xhat * scale
            out = out + self.param("bias", nn.initializers.zeros, (channels,))
            gain = inv_std * scale
        return {"xhat": xhat, "inv_std": inv_std, "gain": gain, "bn": out}


class FeedbackConv(nn.Module):
    """A bias-free conv with nn.Conv's parameter layout whose vjp uses a feedback kernel.

    backward="fa": a fixed random kernel in the "feedback" collection; "sign": sign(W).
    """

    features: int
    kernel: int
    strides: int
    init_scheme: str
    backward: str
    init_scale: float = 1.0
    dtype: Any = None  # the conv's operands (bfloat16); its result comes back in x's dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (self.kernel, self.kernel, x.shape[-1], self.features)
        kernel = self.param("kernel", kernel_initializer(self.init_scheme, self.init_scale),
                            shape)
        feedback = None
        if self.backward == "fa":
            feedback = feedback_variable(self, kernel_initializer(self.init_scheme), shape)
        back = feedback_ops.backward_kernel(kernel, feedback, self.backward)
        out_dtype = x.dtype
        if self.dtype is not None:
            x, kernel, back = (v.astype(self.dtype) for v in (x, kernel, back))
        return feedback_ops.feedback_conv(x, kernel, back, self.strides,
                                          (self.kernel - 1) // 2).astype(out_dtype)


class ConvBN(nn.Module):
    """conv (no bias) then optional BatchNorm; returns the layer's local signals."""

    features: int
    kernel: int
    strides: int = 1
    use_bn: bool = True
    bn_affine: bool = True
    init_scheme: str = "he"
    backward: str = "exact"
    init_scale: float = 1.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
        pad = (self.kernel - 1) // 2
        if self.backward == "exact":
            conv = nn.Conv(self.features, (self.kernel, self.kernel),
                           (self.strides, self.strides), padding=((pad, pad), (pad, pad)),
                           use_bias=False, name="conv", dtype=self.dtype,
                           kernel_init=kernel_initializer(self.init_scheme, self.init_scale))(
                               x).astype(x.dtype)
        else:
            conv = FeedbackConv(self.features, self.kernel, self.strides, self.init_scheme,
                                self.backward, self.init_scale, self.dtype, name="conv")(x)
        signals = {"input": x, "conv": conv}
        if self.use_bn:
            signals.update(BatchNorm(affine=self.bn_affine, name="bn")(conv, train=train))
        else:
            signals["bn"] = conv
        return signals


class ResNet(nn.Module):
    """ResNet-18/34 (BasicBlock) and ResNet-50 (Bottleneck), He et al. 2016.

    Attributes:
      depth: 18, 34 or 50.
      num_classes: output width.
      width: channels of the first stage (64 in the standard nets; smaller fits a CPU).
      stem: "cifar" (3x3 stride 1, no max-pool) or "imagenet" (7x7 stride 2 + 3x3 max-pool).
      use_bn, bn_affine: BatchNorm ablations (no BN, no-affine BN).
      init_scheme: conv / dense init (see `models.kernel_initializer`).
      init_scale: multiplies the conv kernels' init (not the head's, nor FA's feedback
        kernels). BatchNorm makes the forward invariant to it; it sets how far the weights
        start from the origin, so how fast learning outgrows the random init.
      backward: what autodiff sends back through each layer: "exact" (backprop), "fa"
        (fixed random kernels in the "feedback" collection) or "sign" (sign(W), uSF).
        Only the feedback-alignment baselines change it; the forward is the same.
      branch_gradient: False: autodiff sends no gradient into a residual branch's input,
        only through the shortcut (each branch still gets its own gradient from the block
        output): truncated backprop, the autodiff twin of `Wiring(chain="shortcut")`. The
        forward is the same.
      dtype: the convolutions' and the head's operands (bfloat16; their results come back in
        float32). Activations, BatchNorm, parameters and logits stay float32: a local rule's
        targets are differences of activations, which bfloat16 rounding would swamp.

    Returns (from __call__(x, train=...)) a dict:
      "stem": ConvBN signals, plus "post" (relu) and, for the ImageNet stem, "pooled";
      "blocks": {block_XX: {"conv1", "conv2"[, "conv3"][, "proj"]: ConvBN signals,
                 "shortcut", "pre" (h_b), "post" (u_b)}};
      "head": {"input": globally pooled features}; "logits".
    """

    depth: int = 18
    num_classes: int = 1000
    width: int = 64
    stem: str = "imagenet"
    use_bn: bool = True
    bn_affine: bool = True
    init_scheme: str = "he"
    backward: str = "exact"
    init_scale: float = 1.0
    branch_gradient: bool = True
    dtype: Any = None  # None: float32 throughout

    def _conv(self, features, kernel, strides=1, name=None):
        return ConvBN(features, kernel, strides, self.use_bn, self.bn_affine, self.init_scheme,
                      self.backward, self.init_scale, self.dtype, name=name)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = True,
                 perturb: dict[str, jax.Array] | None = None) -> dict:
        """`perturb`: {block name: an array added to that block's output u_b before the
        blocks above read it} (a forward-only probe of the layers above,
        `Wiring.skip_learning="perturb"`); the returned signals are the perturbed pass's."""
        if self.depth not in STAGES:
            raise ValueError(f"Unknown ResNet depth {self.depth}; choose one of {sorted(STAGES)}.")
        if self.backward not in feedback_ops.BACKWARDS:
            raise ValueError(f"Unknown backward {self.backward!r}; choose one of "
                             f"{feedback_ops.BACKWARDS}.")
        if self.stem not in ("cifar", "imagenet"):
            raise ValueError(f"Unknown stem {self.stem!r}; choose 'cifar' or 'imagenet'.")
        if x.ndim != 4:
            raise ValueError(f"ResNet expects images (batch, height, width, channels), got "
                             f"shape {x.shape}.")
        kind, stage_sizes = STAGES[self.depth]
        if self.stem == "cifar":
            stem = self._conv(self.width, 3, name="stem")(x, train=train)
            stem["post"] = u = nn.relu(stem["bn"])
        else:
            stem = self._conv(self.width, 7, 2, name="stem")(x, train=train)
            stem["post"] = nn.relu(stem["bn"])
            stem["pooled"] = u = nn.max_pool(stem["post"], (3, 3), (2, 2), ((1, 1), (1, 1)))
        blocks, index = {}, 0
        for stage, num_blocks in enumerate(stage_sizes):
            for i in range(num_blocks):
                strides = 2 if stage > 0 and i == 0 else 1
                block = self._block(kind, u, self.width * 2**stage, strides, block_name(index),
                                    train)
                blocks[block_name(index)] = block
                u = block["post"]
                if perturb and block_name(index) in perturb:
                    u = u + perturb[block_name(index)]
                index += 1
        pooled = jnp.mean(u, axis=(1, 2))
        logits = FeedbackDense(self.num_classes, self.backward, dtype=self.dtype,
                               name="head")(pooled)
        return {"stem": stem, "blocks": blocks, "head": {"input": pooled}, "logits": logits}

    def _block(self, kind: str, u, features: int, strides: int, name: str, train: bool) -> dict:
        """One residual block: h_b = BN(conv_last(...)) + shortcut(u), u_b = relu(h_b)."""
        out_features = features * (4 if kind == "bottleneck" else 1)
        if kind == "basic":
            specs = (("conv1", features, 3, strides), ("conv2", features, 3, 1))
        else:  # torchvision's v1.5: the stride sits on the 3x3 conv
            specs = (("conv1", features, 1, 1), ("conv2", features, 3, strides),
                     ("conv3", out_features, 1, 1))
        block, z = {}, u if self.branch_gradient else jax.lax.stop_gradient(u)
        for i, (layer, feats, kernel, s) in enumerate(specs):
            block[layer] = self._conv(feats, kernel, s, name=f"{name}_{layer}")(z, train=train)
            if i < len(specs) - 1:
                z = block[layer]["post"] = nn.relu(block[layer]["bn"])
            else:
                z = block[layer]["bn"]
        if strides != 1 or u.shape[-1] != out_features:
            block["proj"] = self._conv(out_features, 1, strides, name=f"{name}_proj")(
                u, train=train)
            block["shortcut"] = block["proj"]["bn"]
        else:
            block["shortcut"] = u
        block["pre"] = z + block["shortcut"]
        block["post"] = nn.relu(block["pre"])
        return block


def resnet(depth: int, *, num_classes: int, width: int = 64, stem: str = "imagenet",
           **kwargs) -> ResNet:
    """ResNet of the given depth; kwargs: use_bn, bn_affine, init_scheme, init_scale, backward."""
    return ResNet(depth=depth, num_classes=num_classes, width=width, stem=stem, **kwargs)


def param_count(params) -> int:
    """Number of trainable scalars in a params pytree."""
    return sum(int(p.size) for p in jax.tree.leaves(params))


def conv_layer_names(model: ResNet) -> Sequence[str]:
    """Parameter names of every conv layer of `model`, in depth order."""
    kind, stage_sizes = STAGES[model.depth]
    names = ["stem"]
    layers = ("conv1", "conv2") if kind == "basic" else ("conv1", "conv2", "conv3")
    index = 0
    for stage, num_blocks in enumerate(stage_sizes):
        for i in range(num_blocks):
            names += [f"{block_name(index)}_{layer}" for layer in layers]
            if i == 0 and (stage > 0 or kind == "bottleneck"):
                names.append(f"{block_name(index)}_proj")
            index += 1
    return names
