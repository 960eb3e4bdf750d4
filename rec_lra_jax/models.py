"""Flax models whose forward pass exposes what local learning rules need per layer.

A dense chain trained by a rule as an optax transform (rules.py):

>>> import jax, jax.numpy as jnp, optax
>>> import rec_lra_jax as rl
>>> model = rl.MLP(features=(32, 32, 10), activation="tanh")
>>> x, labels = jnp.ones((8, 784)), jax.nn.one_hot(jnp.arange(8) % 10, 10)
>>> params = model.init(jax.random.key(0), x)["params"]
>>> signals = model.apply({"params": params}, x)
>>> rule = rl.rec_lra(beta=0.1, activation="tanh")
>>> feedback = rl.Wiring().init(jax.random.key(1), signals, params, activation="tanh")
>>> trainables = {"params": params, "feedback": feedback}
>>> tx = optax.chain(rule, optax.adam(1e-3))
>>> updates, _ = tx.update(trainables, tx.init(trainables), trainables,
...                        signals=signals, labels=labels)
>>> updates["params"]["layer_00"]["kernel"].shape
(784, 32)
"""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rec_lra_jax import feedback_ops

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "leaky_relu": jax.nn.leaky_relu,
    "sigmoid": jax.nn.sigmoid,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "elu": jax.nn.elu,
    "softplus": jax.nn.softplus,
    "identity": lambda x: x,
}


def get_activation(name: str | Callable) -> Callable[[jax.Array], jax.Array]:
    """The elementwise activation called `name` (or `name` itself if it is a callable).

    Local rules take the activation's derivative locally (jax.jvp at the unit's own
    pre-activation), so any differentiable elementwise callable works.
    """
    if callable(name):
        return name
    if name not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)} "
                         "or pass a callable.")
    return ACTIVATIONS[name]


KERNEL_INITS = ("lra_e", "unit", "he", "lecun")  # forward-weight schemes (`kernel_initializer`)


def kernel_initializer(scheme: str, scale: float = 1.0) -> nn.initializers.Initializer:
    """Forward-weight init schemes (docs/algorithm.md, "Initialisation").

    "lra_e": N(0, 0.1^2) as in the authors' LRA-E code; "unit": N(0, 1) as in the paper;
    "he": N(0, 2 / fan_in); "lecun": N(0, 1 / fan_in) (flax's default). `scale` multiplies
    the standard deviation.
    """
    schemes = {
        "lra_e": nn.initializers.normal(0.1),
        "unit": nn.initializers.normal(1.0),
        "he": nn.initializers.variance_scaling(2.0, "fan_in", "normal"),
        "lecun": nn.initializers.lecun_normal(),
    }
    if scheme not in schemes:
        raise ValueError(f"Unknown init scheme {scheme!r}; choose one of {sorted(schemes)}.")
    init = schemes[scheme]

    def scaled(key, shape, dtype=jnp.float32):
        return scale * init(key, shape, dtype)

    return init if scale == 1.0 else scaled


def layer_name(index: int) -> str:
    """Name of weight layer `index` (0-based); names sort in depth order."""
    return f"layer_{index:02d}"


def feedback_variable(module: nn.Module, init, shape) -> jax.Array:
    """The layer's fixed FA kernel from the "feedback" collection.

    Created at init. Inference may omit the collection (the forward never reads it); then
    zeros stand in, so a training call that forgets it sends nothing back instead of
    silently running backprop.
    """
    if module.is_initializing() or module.has_variable("feedback", "kernel"):
        return module.variable("feedback", "kernel",
                               lambda: init(module.make_rng("params"), shape)).value
    return jnp.zeros(shape)


class FeedbackDense(nn.Module):
    """A dense layer (nn.Dense's parameter layout) whose vjp may use a feedback kernel.

    backward: "exact" (backprop), "fa" (a fixed random kernel in the "feedback"
    collection) or "sign" (sign(W), uSF); the forward is the same for all three.
    """

    features: int
    backward: str = "exact"
    init_scheme: str = "lecun"
    use_bias: bool = True
    feedback_init: str | None = None  # FA kernels' init scheme; None: init_scheme
    dtype: Any = None  # the matmul's operands (bfloat16); its result comes back in float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (x.shape[-1], self.features)
        init = kernel_initializer(self.init_scheme)
        kernel = self.param("kernel", init, shape)
        bias = (self.param("bias", nn.initializers.zeros, (self.features,))
                if self.use_bias else 0.0)
        if self.dtype is not None:
            out_dtype = jnp.result_type(x, kernel)
            x, kernel, bias = (jnp.asarray(v, self.dtype) for v in (x, kernel, bias))
            return self._apply(x, kernel, bias, shape).astype(out_dtype)
        return self._apply(x, kernel, bias, shape)

    def _apply(self, x, kernel, bias, shape):
        if self.backward == "exact":
            return x @ kernel + bias
        feedback = None
        if self.backward == "fa":
            feedback = feedback_variable(
                self, kernel_initializer(self.feedback_init or self.init_scheme), shape)
        back = feedback_ops.backward_kernel(kernel, feedback, self.backward).astype(kernel.dtype)
        return feedback_ops.feedback_dense(x, kernel, back) + bias


def residual_source(layer: int, gap: int, widths: Sequence[int]) -> int | None:
    """Layer whose activity is added to layer `layer`'s pre-activation, or None.

    Layers are 1-based, widths[0] is the input width. Every `gap`-th layer (l % gap == 0)
    below the output gets z_{l - gap} added when the widths match (rec-LRA's residual gap g).
    """
    num_layers = len(widths) - 1
    if gap <= 0 or layer % gap or layer >= num_layers:
        return None
    source = layer - gap
    return source if widths[source] == widths[layer] else None


class MLP(nn.Module):
    """Multilayer perceptron h_l = z_{l-1} W_l + b_l (+ z_{l-g}), z_l = phi(h_l).

    Returns a dict with per-layer tuples, in depth order:
      "inputs": z_{l-1} (the layer's input; z_0 is the flattened image),
      "pre":    h_l,
      "post":   z_l, with z_L = softmax(h_L) at the output,
    and "logits" = h_L. The same call serves training and inference.

    Attributes:
      features: widths of the hidden layers followed by the number of classes.
      activation: hidden nonlinearity phi (key of ACTIVATIONS or a callable).
      residual_gap: g; 0 disables residual connections.
      init_scheme: forward-weight init scheme (see `kernel_initializer`).
      backward: what autodiff sends back through each layer: "exact", "fa" or "sign"
        (see `FeedbackDense`); only the autodiff baselines change it.
    """

    features: Sequence[int]
    activation: str | Callable = "tanh"
    residual_gap: int = 0
    init_scheme: str = "lra_e"
    backward: str = "exact"
    feedback_init: str | None = None  # backward="fa": the feedback kernels' init scheme
    # bfloat16: each layer's matmul (its result back in float32); activations, parameters
    # and everything else stay float32
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> dict:
        del train  # no BatchNorm or dropout: one path for training and inference
        if x.ndim < 2:
            raise ValueError(f"MLP expects a batch of inputs, got shape {x.shape}.")
        phi = get_activation(self.activation)
        z = x.reshape(x.shape[0], -1)
        if not self.is_initializing() and "params" in self.variables:
            expected = self.variables["params"][layer_name(0)]["kernel"].shape[0]
            if z.shape[-1] != expected:
                raise ValueError(
                    f"MLP input has shape {x.shape} ({z.shape[-1]} features per example) but "
                    f"the parameters expect {expected} features per example.")
        widths = (z.shape[-1], *self.features)
        zs, hs = [z], []
        for l, width in enumerate(self.features, start=1):
            if self.backward == "exact":
                h = nn.Dense(width, name=layer_name(l - 1), dtype=self.dtype,
                             kernel_init=kernel_initializer(self.init_scheme),
                             bias_init=nn.initializers.zeros)(zs[-1]).astype(zs[-1].dtype)
            else:
                h = FeedbackDense(width, self.backward, self.init_scheme,
                                  feedback_init=self.feedback_init, dtype=self.dtype,
                                  name=layer_name(l - 1))(zs[-1])
            source = residual_source(l, self.residual_gap, widths)
            if source is not None:
                h = h + zs[source]
            hs.append(h)
            zs.append(phi(h) if l < len(self.features) else jax.nn.softmax(h))
        return {"inputs": tuple(zs[:-1]), "pre": tuple(hs), "post": tuple(zs[1:]), "logits": hs[-1]}
