"""Local deltas: each equals autodiff of its layer's local loss; wiring equivalences."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rec_lra_jax import rules
from rec_lra_jax.wiring import Wiring, recursive_sources
from tests.helpers import rule_deltas, rule_feedback, tiny_mlp, unit_errors


def _run(model, params, x, y, rule_fn=rules.rec_lra, wiring=None, **kwargs):
    """(feedback, deltas, errors) of rule_fn(**kwargs) on the tiny MLP."""
    rule = rule_fn(activation="tanh", **({"wiring": wiring} if wiring else {}), **kwargs)
    name = {rules.rec_lra: "rec_lra", rules.lra_e: "lra_e", rules.kolen_pollack: "kp"}[rule_fn]
    feedback = rule_feedback(rules.wiring_of(name, wiring=wiring), model, params, x)
    deltas = rule_deltas(rule, model, params, feedback, x, y)
    sweep_options = {k: v for k, v in kwargs.items() if k in ("beta", "error_unit")}
    if rule_fn is rules.lra_e:
        wiring = Wiring("adjacent")
    errors, out = unit_errors(model, params, feedback, x, y, wiring=wiring, **sweep_options)
    return feedback, deltas, errors, out


@pytest.mark.parametrize("residual_gap", [0, 1])
def test_weight_delta_is_autodiff_of_local_loss(residual_gap):
    """dW_l = grad_W <h_l(W), e_l> / B with z_{l-1} and e_l held fixed (no phi')."""
    model, params, x, y = tiny_mlp(features=(6, 6, 6, 4), residual_gap=residual_gap)
    _, deltas, errors, _ = _run(model, params, x, y)
    acts = model.apply({"params": params}, x)
    for l, name in enumerate(sorted(params)):
        z_in, e = acts["inputs"][l], errors[l]

        def local_loss(p, z_in=z_in, e=e):
            return jnp.sum((z_in @ p["kernel"] + p["bias"]) * e) / x.shape[0]

        want = jax.grad(local_loss)(params[name])
        for leaf in ("kernel", "bias"):
            np.testing.assert_allclose(deltas["params"][name][leaf], want[leaf],
                                       rtol=1e-5, atol=1e-7)


def test_dx_delta_is_autodiff_of_squared_target_loss():
    """With dx, hidden dW_l = grad_W 1/2 ||phi(z_{l-1} W + b) - ybar_l||^2 / B, ybar fixed."""
    model, params, x, y = tiny_mlp()
    _, deltas, errors, _ = _run(model, params, x, y, dx=True)
    acts = model.apply({"params": params}, x)
    for l, name in enumerate(sorted(params)[:-1]):
        z_in = acts["inputs"][l]
        ybar = acts["post"][l] - errors[l]  # L2 units: e = z - ybar

        def local_loss(p, z_in=z_in, ybar=ybar):
            z = jnp.tanh(z_in @ p["kernel"] + p["bias"])
            return 0.5 * jnp.sum((z - ybar) ** 2) / x.shape[0]

        want = jax.grad(local_loss)(params[name])
        np.testing.assert_allclose(deltas["params"][name]["kernel"], want["kernel"],
                                   rtol=1e-4, atol=1e-7)


def test_output_delta_is_cross_entropy_gradient_of_its_own_weights():
    model, params, x, y = tiny_mlp()
    _, deltas, _, _ = _run(model, params, x, y)
    grads = rule_deltas("bp", model, params, {}, x, y)
    np.testing.assert_allclose(deltas["params"]["layer_03"]["kernel"],
                               grads["params"]["layer_03"]["kernel"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("unit", ["mixed", "cauchy"])
def test_output_error_unit_keeps_the_cross_entropy_error_at_the_output(unit):
    model, params, x, y = tiny_mlp()
    grads = rule_deltas("bp", model, params, {}, x, y)
    _, deltas, _, _ = _run(model, params, x, y, error_unit=unit, alpha_skip=0.19)
    np.testing.assert_allclose(deltas["params"]["layer_03"]["kernel"],
                               grads["params"]["layer_03"]["kernel"], rtol=1e-5, atol=1e-7)
    _, same, _, _ = _run(model, params, x, y, error_unit=unit, alpha_skip=0.19,
                         output_error_unit=None)
    assert not np.allclose(same["params"]["layer_03"]["kernel"],
                           grads["params"]["layer_03"]["kernel"], atol=1e-4)


def test_kp_feedback_delta_is_gamma_e_src_times_z():
    model, params, x, y = tiny_mlp()
    _, deltas, errors, _ = _run(model, params, x, y, gamma=0.7)
    acts = model.apply({"params": params}, x)
    sources = recursive_sources(4, module_size=2, depth=2)
    for l, src in enumerate(sources, start=1):
        want = 0.7 * errors[src - 1].T @ acts["post"][l - 1] / x.shape[0]
        np.testing.assert_allclose(deltas["feedback"][f"layer_{l - 1:02d}"], want,
                                   rtol=1e-5, atol=1e-7)


def test_error_displacement_and_fixed_feedback_rules():
    model, params, x, y = tiny_mlp()
    _, fixed, _, _ = _run(model, params, x, y, feedback_rule="fixed")
    assert all(not np.any(v) for v in jax.tree.leaves(fixed["feedback"]))
    feedback, ed, errors, _ = _run(model, params, x, y, feedback_rule="error_displacement",
                                   gamma=2.0)
    d3 = errors[3] @ feedback["layer_02"]
    np.testing.assert_allclose(ed["feedback"]["layer_02"], -2.0 * errors[3].T @ d3 / 6,
                               rtol=1e-5, atol=1e-6)


def test_rec_lra_with_large_modules_equals_lra_e():
    model, params, x, y = tiny_mlp(features=(6, 6, 6, 6, 4))
    _, rec, _, _ = _run(model, params, x, y, wiring=Wiring(module_size=100))
    _, lra, _, _ = _run(model, params, x, y, rules.lra_e)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), rec, lra)


def test_rec_lra_feedback_shapes_follow_the_skip_wiring():
    model, params, x, y = tiny_mlp(features=(6, 6, 6, 6, 4))
    feedback = rule_feedback("rec_lra", model, params, x)
    assert feedback["layer_01"].shape == (4, 6)  # E_{L->2}: skip from the output
    assert feedback["layer_00"].shape == (6, 6)  # E_{2->1}: adjacent


def test_backprop_rule_is_jax_grad():
    model, params, x, y = tiny_mlp(residual_gap=1)
    deltas = rule_deltas("bp", model, params, {}, x, y)
    want = jax.grad(lambda p: jnp.mean(optax.softmax_cross_entropy(
        model.apply({"params": p}, x)["logits"], y)))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), deltas["params"], want)


def test_dfa_on_one_hidden_layer_with_tied_feedback_is_backprop():
    model, params, x, y = tiny_mlp(features=(6, 4))
    tied = {"layer_00": params["layer_01"]["kernel"].T}
    dfa = rule_deltas(rules.dfa(activation="tanh"), model, params, tied, x, y)
    bp = rule_deltas("bp", model, params, {}, x, y)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
                 dfa["params"], bp["params"])


def test_bad_inputs_get_clear_errors():
    model, params, x, y = tiny_mlp()
    rule = rules.rec_lra(activation="tanh")
    feedback = rule_feedback("rec_lra", model, params, x)
    with pytest.raises(ValueError, match="one-hot"):
        rule_deltas(rule, model, params, feedback, x, jnp.argmax(y, -1))
    with pytest.raises(ValueError, match="parameters expect 9 features"):
        rule_deltas(rule, model, params, feedback, x[:, :5], y)
    with pytest.raises(ValueError, match="feedback rule"):
        rules.rec_lra(feedback_rule="hebbian")
    with pytest.raises(ValueError, match="activation"):
        rule_feedback("rec_lra", model, params, x, activation=None)  # a dense chain needs phi
