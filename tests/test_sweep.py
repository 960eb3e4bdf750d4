"""The top-down sweep: wiring, error units, exact numerics and the small-beta limit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rec_lra_jax import diagnostics, rules, sweep
from rec_lra_jax.wiring import Wiring, chain_sources, recursive_sources
from tests.helpers import rule_deltas, rule_feedback, tied_feedback, tiny_mlp, unit_errors


def adjacent_sources(n):
    return chain_sources(Wiring("adjacent"), n)


def direct_sources(n):
    return chain_sources(Wiring("direct"), n)


def test_recursive_sources_depth2():
    # m=2: layer 2 is a module output (from the output layer 4); 1 and 3 are adjacent.
    assert recursive_sources(4, module_size=2, depth=2) == (2, 4, 4)
    assert recursive_sources(6, module_size=2, depth=2) == (2, 6, 4, 6, 6)


def test_recursive_sources_depth3_is_a_tree():
    src = recursive_sources(9, module_size=2, depth=3)
    assert src == (2, 4, 4, 9, 6, 8, 8, 9)
    for l in range(1, 9):  # no layer is more than `depth` error hops from the output
        hops, j = 0, l
        while j != 9:
            j, hops = src[j - 1], hops + 1
        assert hops <= 3


def test_recursive_sources_limits():
    assert recursive_sources(5, module_size=10, depth=2) == adjacent_sources(5)
    assert recursive_sources(5, module_size=2, depth=1) == direct_sources(5)
    with pytest.raises(ValueError, match="module_size"):
        Wiring(module_size=0)


def test_error_units_values():
    u = jnp.array([-2.0, -0.5, 0.0, 0.5])
    np.testing.assert_allclose(sweep.error_units(u, "l2"), u)
    np.testing.assert_allclose(sweep.error_units(u, "mixed", 0.25),
                               [-0.5 - 0.75, -0.125 - 0.75, 0.0, 0.125 + 0.75])
    np.testing.assert_allclose(sweep.error_units(u, "cauchy"), [-0.8, -0.8, 0.0, 0.8])
    with pytest.raises(ValueError, match="error unit"):
        sweep.error_units(u, "l3")


def test_compute_errors_matches_numpy_by_hand():
    model, params, x, y = tiny_mlp()
    feedback = rule_feedback("rec_lra", model, params, x, seed=3)
    acts = model.apply({"params": params}, x)
    errors, out = unit_errors(model, params, feedback, x, y, beta=0.3)
    disp = out.displacements
    a = jax.tree.map(np.asarray, acts)
    E = {k: np.asarray(v) for k, v in feedback.items()}
    e4 = a["post"][3] - np.asarray(y)
    e3 = a["post"][2] - np.tanh(a["pre"][2] - 0.3 * (e4 @ E["layer_02"]))
    e2 = a["post"][1] - np.tanh(a["pre"][1] - 0.3 * (e4 @ E["layer_01"]))  # skip from output
    e1 = a["post"][0] - np.tanh(a["pre"][0] - 0.3 * (e2 @ E["layer_00"]))
    for got, want in zip(errors, (e1, e2, e3, e4), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(disp["layer_01"], e4 @ E["layer_01"], rtol=1e-5, atol=1e-6)


def test_gradient_mode_with_tied_feedback_is_backprop():
    model, params, x, y = tiny_mlp()
    sources = adjacent_sources(4)
    fa = rules.local_rule(wiring=Wiring("adjacent"), mode="gradient", feedback_rule="fixed",
                          activation="tanh")
    fa_deltas = rule_deltas(fa, model, params, tied_feedback(params, sources), x, y)
    bp_deltas = rule_deltas("bp", model, params, {}, x, y)
    for a, b in zip(jax.tree.leaves(fa_deltas["params"]), jax.tree.leaves(bp_deltas["params"]),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_small_beta_limit_spec_check_1():
    """docs/algorithm.md check 1: tied E, beta=1e-3: cos(dW, grad) > 0.99, ratio ~ beta^(L-l)."""
    beta = 1e-3
    with jax.enable_x64(True):
        model, params, x, y = tiny_mlp(features=(16, 16, 16, 5), input_dim=12, batch=32,
                                       dtype=jnp.float64)
        sources = adjacent_sources(4)
        rule = rules.lra_e(beta=beta, activation="tanh")
        deltas = rule_deltas(rule, model, params, tied_feedback(params, sources), x, y)
        grads = rule_deltas("bp", model, params, {}, x, y)
        cos = {k: float(v) for k, v in
               diagnostics.layer_cosines(deltas["params"], grads["params"]).items()}
        ratios = {k: float(v) for k, v in
                  diagnostics.layer_norm_ratios(deltas["params"], grads["params"]).items()}
    for l, name in enumerate(sorted(cos), start=1):
        assert cos[name] > 0.99, (name, cos[name])
        expected = beta ** (4 - l)
        assert 0.9 * expected < ratios[name] < 1.1 * expected, (name, ratios[name], expected)


def test_untied_cosines_are_not_trivially_one():
    """Control for the check above: random E gives cosines far from 1 in the hidden layers."""
    model, params, x, y = tiny_mlp(features=(16, 16, 16, 5), input_dim=12, batch=32)
    rule = rules.lra_e(beta=1e-3, activation="tanh")
    deltas = rule_deltas(rule, model, params, rule_feedback("lra_e", model, params, x, 9), x, y)
    grads = rule_deltas("bp", model, params, {}, x, y)
    cos = diagnostics.layer_cosines(deltas["params"], grads["params"])
    assert cos["layer_03"] > 0.999  # the output layer's delta is the true gradient
    assert min(cos["layer_00"], cos["layer_01"]) < 0.9
