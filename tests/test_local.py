"""Local deltas: each equals autodiff of its layer's local loss; wiring equivalences."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rec_lra_jax import local, resnet, rules, steps, sweep
from rec_lra_jax.models import get_activation
from rec_lra_jax.wiring import Wiring, build, get, recursive_sources
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


def _grouped_cases():
    mlp = dict(activation="tanh")
    return [
        ("mlp", "rec_lra", lambda g: rules.rec_lra(grouped=g, **mlp)),
        ("mlp", "rec_lra depth 1", lambda g: rules.rec_lra(
            wiring=Wiring(depth=1), feedback_rule="error_displacement", dx=True, grouped=g,
            **mlp)),
        ("mlp", "lra_e", lambda g: rules.lra_e(grouped=g, **mlp)),
        ("mlp", "kp", lambda g: rules.kolen_pollack(grouped=g, **mlp)),
        ("mlp", "dfa", lambda g: rules.dfa(grouped=g, **mlp)),
        ("resnet", "rec_lra", lambda g: rules.rec_lra(grouped=g)),
        ("resnet", "rec_lra stages, readouts", lambda g: rules.rec_lra(
            wiring=Wiring(module="stage", local_loss="only", local_loss_grid=2,
                          local_loss_distill=-0.5), rescale=True, grouped=g)),
        ("resnet", "kp", lambda g: rules.kolen_pollack(grouped=g)),
        ("resnet", "dfa", lambda g: rules.dfa(grouped=g)),
    ]


@pytest.mark.parametrize("family,name,make", _grouped_cases(),
                         ids=[f"{f}-{n}" for f, n, _ in _grouped_cases()])
def test_grouped_deltas_equal_the_looped_ones(family, name, make, monkeypatch):
    """grouped=True computes same-shape layers' and synapses' deltas with one jax.vmap per
    group, and the carries of synapses that read the same error with one matmul: the same
    deltas as one op per layer and synapse (to 1e-6), for every local rule, MLP and ResNet,
    and groups of more than one really form."""
    if family == "mlp":
        model, params, x, labels = tiny_mlp((6, 6, 6, 6, 6, 4), input_dim=6, batch=5)
        batch_stats, activation = {}, "tanh"
    else:
        model = resnet.resnet(18, num_classes=10, width=4)
        x = jax.random.normal(jax.random.key(2), (4, 16, 16, 3))
        labels = jax.nn.one_hot(jnp.arange(4) % 10, 10)
        variables = model.init(jax.random.key(0), x, train=False)
        params, batch_stats, activation = variables["params"], variables["batch_stats"], None
    tx, wiring = make(False), _wiring_of(name)
    signals = model.apply(steps.model_variables(params, batch_stats), x, train=False)
    feedback = wiring.init(jax.random.key(1), signals, params, activation=activation)
    calls = []
    vmapped = local.vmapped
    monkeypatch.setattr(local, "vmapped", lambda *a: calls.append(1) or vmapped(*a))
    shared, products = [], sweep.shared_products
    monkeypatch.setattr(sweep, "shared_products",
                        lambda e, names, fb: shared.append(names) or products(e, names, fb))
    looped = rule_deltas(tx, model, params, feedback, x, labels, batch_stats)
    assert not calls and not shared  # the looped path: one op per layer and synapse
    grouped = rule_deltas(make(True), model, params, feedback, x, labels, batch_stats)
    assert calls  # the option reached the deltas: the vmapped path ran
    graph = build(wiring, signals, params, get_activation(activation) if activation else None)
    # ... and the sweep: every error that two matmul-first synapses carry, once
    assert sorted(shared) == sorted(sweep.shared_sources(graph).values())
    if name in ("rec_lra", "dfa"):  # their skips read e_L: one matmul carries them all
        output = next(n for n, unit in graph.units.items() if unit.drive is None)
        assert len(sweep.shared_sources(graph)[("unit", output)]) > 1, shared
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(looped),
                            jax.tree.leaves(grouped), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6 * float(jnp.abs(a).max()) + 1e-9,
                                   err_msg=jax.tree_util.keystr(path))
    layer_groups = {}
    for layer in graph.layers.values():
        key = (layer.kind, get(signals, layer.input).shape, layer.kernel_shape)
        layer_groups[key] = layer_groups.get(key, 0) + 1
    assert max(layer_groups.values()) > 1  # the vmapped path ran


def _wiring_of(name):
    if name.startswith("rec_lra stages"):
        return Wiring(module="stage", local_loss="only", local_loss_grid=2,
                      local_loss_distill=-0.5)
    if name == "rec_lra depth 1":
        return Wiring(depth=1)
    return rules.wiring_of(name)
