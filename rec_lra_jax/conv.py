"""Convolutional pieces of the local rules: kernel correlations and conv-transpose feedback.

Every function here is linear in the array it transposes and touches a single layer: the
kernel delta is the weight cotangent of one convolution given its output error, and the
displacement carried by an error-synapse kernel E is the transpose of the convolution
with E (docs/algorithm.md, check 2). Both are built with `jax.linear_transpose` of that one
linear map, so no derivative of the network (or of any nonlinearity) is ever taken.
Layout: NHWC activations, HWIO kernels, symmetric integer padding as in `resnet.ConvBN`.
"""

import jax
import jax.numpy as jnp

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def conv(x: jax.Array, kernel: jax.Array, *, strides: int = 1, padding: int = 0) -> jax.Array:
    """The forward convolution of `resnet.ConvBN` (no bias)."""
    return jax.lax.conv_general_dilated(
        x, kernel, (strides, strides), ((padding, padding), (padding, padding)),
        dimension_numbers=DIMENSION_NUMBERS)


def kernel_delta(x: jax.Array, e: jax.Array, kernel_shape: tuple[int, ...], *,
                 strides: int = 1, padding: int = 0) -> jax.Array:
    """dW = corr(x, e) / B: the kernel cotangent of conv(x, .) at output error e, per example.

    The gradient of the local loss <conv(x, W), e> / B with x and e held fixed.
    """
    spec = jax.ShapeDtypeStruct(kernel_shape, x.dtype)
    (delta,) = jax.linear_transpose(
        lambda k: conv(x, k, strides=strides, padding=padding), spec)(e)
    return delta / x.shape[0]


def transpose_displacement(e: jax.Array, feedback_kernel: jax.Array,
                           input_shape: tuple[int, ...], *, strides: int = 1,
                           padding: int = 0) -> jax.Array:
    """d = conv_transpose(e, E): carries an error map back to a layer's input space.

    E has the shape of the forward kernel it stands in for and the same stride and padding,
    so the cost equals backprop's input gradient for that layer (docs/algorithm.md, "Wiring").
    """
    spec = jax.ShapeDtypeStruct(input_shape, e.dtype)
    (d,) = jax.linear_transpose(
        lambda z: conv(z, feedback_kernel, strides=strides, padding=padding), spec)(e)
    return d


def avg_pool_adjoint(d: jax.Array, spatial_shape: tuple[int, int]) -> jax.Array:
    """Transpose of global average pooling: spreads (B, C) evenly over (B, H, W, C)."""
    height, width = spatial_shape
    return jnp.broadcast_to(d[:, None, None, :] / (height * width),
                            (d.shape[0], height, width, d.shape[-1]))


def grid_pool(z: jax.Array, grid: int) -> jax.Array:
    """Average pooling of (B, H, W, C) to (B, grid * grid * C) (grid divides H and W);
    grid 1 is global average pooling."""
    b, h, w, c = z.shape
    cells = z.reshape(b, grid, h // grid, grid, w // grid, c).mean(axis=(2, 4))
    return cells.reshape(b, -1)


def grid_pool_adjoint(d: jax.Array, shape: tuple[int, ...], grid: int) -> jax.Array:
    """Transpose of `grid_pool`: spreads (B, grid * grid * C) evenly over `shape`."""
    b, h, w, c = shape
    cells = d.reshape(b, grid, 1, grid, 1, c) / ((h // grid) * (w // grid))
    return jnp.broadcast_to(cells, (b, grid, h // grid, grid, w // grid, c)).reshape(shape)


def upsample(z: jax.Array, factor: int) -> jax.Array:
    """Nearest upsampling of (B, H, W, C) by an integer factor."""
    if factor == 1:
        return z
    return jnp.repeat(jnp.repeat(z, factor, axis=1), factor, axis=2)


def upsample_adjoint(d: jax.Array, factor: int) -> jax.Array:
    """Transpose of `upsample`: sums each factor x factor window."""
    if factor == 1:
        return d
    b, h, w, c = d.shape
    return d.reshape(b, h // factor, factor, w // factor, factor, c).sum(axis=(2, 4))


def bn_affine_deltas(e: jax.Array, xhat: jax.Array) -> dict[str, jax.Array]:
    """Local BatchNorm-affine deltas: d_scale = sum(e * x_hat) / B, d_bias = sum(e) / B.

    The gradient of <x_hat * scale + bias, e> / B with x_hat and e held fixed.
    """
    batch = e.shape[0]
    axes = tuple(range(e.ndim - 1))
    return {"scale": jnp.sum(e * xhat, axis=axes) / batch, "bias": jnp.sum(e, axis=axes) / batch}
