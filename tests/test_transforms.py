"""clip_by_tensor_norm: exact values, docs/algorithm.md check 4, the optax contract."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rec_lra_jax.transforms import clip_by_tensor_norm


def _tree():
    return {"big": jnp.array([[3.0, 4.0]]), "small": jnp.array([0.3, 0.4]), "zero": jnp.zeros(3)}


def test_exact_values_and_per_tensor():
    tx = clip_by_tensor_norm(1.0)
    out, _ = tx.update(_tree(), tx.init(_tree()))
    np.testing.assert_allclose(out["big"], [[0.6, 0.8]], rtol=1e-6)
    np.testing.assert_allclose(out["small"], [0.3, 0.4])  # untouched: no global coupling
    np.testing.assert_array_equal(out["zero"], jnp.zeros(3))


def test_spec_check_4_norm_never_exceeds_radius():
    key = jax.random.key(0)
    tx = clip_by_tensor_norm(0.5)
    for i, scale in enumerate([1e-4, 0.1, 1.0, 10.0, 1e4]):
        tree = {"w": scale * jax.random.normal(jax.random.fold_in(key, i), (17, 5))}
        out, _ = tx.update(tree, tx.init(tree))
        norm = float(jnp.linalg.norm(out["w"]))
        assert norm <= 0.5 * (1 + 1e-6)
        if scale < 0.01:
            np.testing.assert_allclose(out["w"], tree["w"])


def test_rejects_bad_radius():
    with pytest.raises(ValueError, match="positive"):
        clip_by_tensor_norm(0.0)


def test_jit_chain_and_no_recompilation():
    tx = optax.chain(clip_by_tensor_norm(1.0), optax.adamw(1e-2, weight_decay=1e-4))
    params = {"w": jnp.ones((4, 3))}
    traces = []

    @jax.jit
    def step(params, state, g):
        traces.append(1)
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for i in range(3):
        params, state = step(params, state, {"w": jnp.full((4, 3), 10.0 * (i + 1))})
    assert len(traces) == 1
    # Adam's first step moves every entry by lr (plus decay) whatever the clipped scale.
    assert jnp.all(params["w"] < 1.0)


def test_inject_hyperparams_multisteps_apply_if_finite_partition():
    grads = {"params": {"w": jnp.full((2, 2), 5.0)}, "feedback": {"e": jnp.full((2,), 5.0)}}
    injected = optax.inject_hyperparams(clip_by_tensor_norm)(max_norm=1.0)
    out, state = injected.update(grads, injected.init(grads))
    np.testing.assert_allclose(jnp.linalg.norm(out["params"]["w"]), 1.0, rtol=1e-6)
    state.hyperparams["max_norm"] = jnp.asarray(2.0)
    out, _ = injected.update(grads, state)
    np.testing.assert_allclose(jnp.linalg.norm(out["params"]["w"]), 2.0, rtol=1e-6)

    multi = optax.MultiSteps(optax.chain(clip_by_tensor_norm(1.0), optax.sgd(1.0)), 2)
    s = multi.init(grads)
    out1, s = multi.update(grads, s, grads)
    out2, s = multi.update(grads, s, grads)
    assert not np.any(out1["params"]["w"]) and np.all(out2["params"]["w"] < 0)

    safe = optax.apply_if_finite(clip_by_tensor_norm(1.0), max_consecutive_errors=2)
    bad = jax.tree.map(lambda g: g * jnp.nan, grads)
    out, _ = safe.update(bad, safe.init(grads))
    assert not np.any(out["params"]["w"])  # a non-finite step is skipped

    split = optax.partition({"clip": clip_by_tensor_norm(1.0), "freeze": optax.set_to_zero()},
                            {"params": "clip", "feedback": "freeze"})
    out, _ = split.update(grads, split.init(grads))
    np.testing.assert_allclose(jnp.linalg.norm(out["params"]["w"]), 1.0, rtol=1e-6)
    assert not np.any(out["feedback"]["e"])


def test_sharded_equals_unsharded():
    assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
    mesh = jax.make_mesh((8,), ("data",), (jax.sharding.AxisType.Auto,))
    tree = {"w": jax.random.normal(jax.random.key(0), (16, 8)) * 3}
    sharded = jax.device_put(tree, NamedSharding(mesh, P("data")))
    tx = clip_by_tensor_norm(1.0)
    want, _ = tx.update(tree, tx.init(tree))
    got, _ = jax.jit(tx.update)(sharded, tx.init(sharded))
    np.testing.assert_allclose(got["w"], want["w"], rtol=1e-6)
