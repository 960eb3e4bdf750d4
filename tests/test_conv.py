"""docs/algorithm.md check 2: conv local updates and conv-transpose displacements equal
single-layer autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rec_lra_jax import conv

# (kernel, strides, padding) of every conv in resnet.py: 3x3 s1/s2, 1x1 s1/s2, 7x7 s2 stem.
GEOMETRIES = [(3, 1, 1), (3, 2, 1), (1, 1, 0), (1, 2, 0), (7, 2, 3)]


def _arrays(kernel, strides, padding, size=9, cin=3, cout=4):
    kx, kw, ke = jax.random.split(jax.random.key(kernel * 10 + strides), 3)
    x = jax.random.normal(kx, (2, size, size, cin))
    w = jax.random.normal(kw, (kernel, kernel, cin, cout))
    out_shape = conv.conv(x, w, strides=strides, padding=padding).shape
    e = jax.random.normal(ke, out_shape)
    return x, w, e


@pytest.mark.parametrize("kernel,strides,padding", GEOMETRIES)
def test_kernel_delta_is_autodiff_of_the_single_layer(kernel, strides, padding):
    x, w, e = _arrays(kernel, strides, padding)
    want = jax.grad(lambda k: jnp.sum(conv.conv(x, k, strides=strides, padding=padding) * e)
                    / x.shape[0])(w)
    got = conv.kernel_delta(x, e, w.shape, strides=strides, padding=padding)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel,strides,padding", GEOMETRIES)
def test_transpose_displacement_is_the_input_vjp(kernel, strides, padding):
    x, w, e = _arrays(kernel, strides, padding)
    want = jax.grad(lambda z: jnp.sum(conv.conv(z, w, strides=strides, padding=padding) * e))(x)
    got = conv.transpose_displacement(e, w, x.shape, strides=strides, padding=padding)
    assert got.shape == x.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_conv_matches_flax_conv():
    import flax.linen as nn

    x, w, _ = _arrays(3, 2, 1)
    layer = nn.Conv(4, (3, 3), (2, 2), padding=((1, 1), (1, 1)), use_bias=False)
    want = layer.apply({"params": {"kernel": w}}, x)
    np.testing.assert_allclose(conv.conv(x, w, strides=2, padding=1), want, rtol=1e-5,
                               atol=1e-5)


def test_avg_pool_adjoint_and_bn_affine_deltas():
    u = jax.random.normal(jax.random.key(0), (2, 4, 5, 3))
    d = jax.random.normal(jax.random.key(1), (2, 3))
    want = jax.grad(lambda u: jnp.sum(jnp.mean(u, axis=(1, 2)) * d))(u)
    np.testing.assert_allclose(conv.avg_pool_adjoint(d, (4, 5)), want, rtol=1e-6)

    xhat, e = u, jax.random.normal(jax.random.key(2), u.shape)
    params = {"scale": jnp.ones(3), "bias": jnp.zeros(3)}
    want = jax.grad(lambda p: jnp.sum((xhat * p["scale"] + p["bias"]) * e) / 2)(params)
    got = conv.bn_affine_deltas(e, xhat)
    for k in ("scale", "bias"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
