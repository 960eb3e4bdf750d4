"""The one engine against the first engine's frozen deltas (tests/fixtures/deltas_v0*.npz).

Every rule and option of both model families: the wiring, the sweep and the local deltas
of today must give the deltas the hand-written MLP and ResNet sweeps gave, to 1e-8 of each
tensor's largest entry. Both engines run in float64 on the frozen inputs: float32 outputs
carry each CPU's rounding, which deep BatchNorm nets amplify past 1e-3 (the fixtures'
README says how they were made).
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from rec_lra_jax import builder, rules, steps
from tests.fixtures import make_deltas_v0 as cases

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
TOLERANCE = 1e-8  # float64; a wiring or sign mistake moves a delta by O(1) of its scale


@pytest.fixture(scope="module")
def frozen():
    """{case: {"inputs": float32 inputs, "outputs": the first engine's float64 outputs}}."""
    data = np.load(FIXTURES / "deltas_v0.npz")
    meta = json.loads(str(data["meta"]))
    tree = traverse_util.unflatten_dict(
        {key: data[digest] for key, digest in meta["index"].items()
         if key.split("/")[1] == "inputs"}, sep="/")
    x64 = np.load(FIXTURES / "deltas_v0_x64.npz")
    outputs = traverse_util.unflatten_dict(
        {key: x64[key] for key in x64.files if key != "meta"}, sep="/")
    for name, case_outputs in outputs.items():
        tree[name]["outputs"] = case_outputs
    return tree


def _old_fa_feedback(feedback, params):
    """The first engine's MLP FA synapses E_l (d_{l+1}, d_l), keyed by the receiving layer,
    as the FA model's kernel-shaped feedback of the layer above: B_{l+1} = E_l^T."""
    names = sorted(params)
    out = {names[0]: {"kernel": jnp.zeros(params[names[0]]["kernel"].shape)}}
    for lower, upper in zip(names[:-1], names[1:], strict=True):
        out[upper] = {"kernel": feedback[lower].T}
    return out


def _assert_close(got, want, what):
    got_flat = traverse_util.flatten_dict(got, sep="/") if isinstance(got, dict) else {"": got}
    want_flat = traverse_util.flatten_dict(want, sep="/") if isinstance(want, dict) else {
        "": want}
    assert sorted(got_flat) == sorted(want_flat), what
    for key, w in want_flat.items():
        g, w = np.asarray(got_flat[key]), np.asarray(w)
        assert g.shape == w.shape, (what, key)
        scale = max(float(np.max(np.abs(w))), 1e-30)
        err = float(np.max(np.abs(g - w))) / scale
        assert err <= TOLERANCE, f"{what} {key}: max |diff| / max |want| = {err:.2e}"


@pytest.mark.parametrize("name", list({**cases.MLP_CASES, **cases.RESNET_CASES}))
def test_deltas_equal_the_first_engine(frozen, name):
    overrides = {**cases.MLP_CASES, **cases.RESNET_CASES}[name]
    # The first engine applied error_unit at the output too ("same"); l2 is the default now.
    config = cases.case_config(name, {**overrides, "lra.output_error_unit": "same"})
    outputs = frozen[name]["outputs"]
    with jax.enable_x64(True):
        inputs = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), frozen[name]["inputs"])
        _check_case(name, config, inputs, outputs)


def _check_case(name, config, inputs, outputs):
    model = builder.create_model(config, 10)
    rule = builder.create_rule(config)
    params = inputs["params"]
    feedback = inputs.get("feedback", {})
    if name == "mlp_fa":
        feedback = _old_fa_feedback(feedback, params)
    batch_stats = inputs.get("batch_stats", {})
    autodiff = rules.RULES[config.rule].autodiff
    if not autodiff:  # the synapses a fresh init gives have the frozen shapes
        signals = jax.eval_shape(lambda: model.apply(
            steps.model_variables(params, batch_stats), inputs["x"][:1], train=False))
        init = builder.create_feedback(config, weight_mirror=False)
        shapes = jax.tree.map(lambda a: a.shape, init(jax.random.key(0), signals, params))
        assert shapes == jax.tree.map(lambda a: a.shape, feedback)
    deltas = steps.rule_deltas(model, rule, params, feedback, batch_stats, inputs["x"],
                               inputs["labels"], autodiff=autodiff)
    assert {a.dtype for a in jax.tree.leaves(deltas)} == {jnp.dtype("float64")}
    _assert_close(deltas["params"], outputs["deltas"]["params"], "params")
    if name == "mlp_fa":  # FA's feedback is the model's fixed kernels now: zero deltas
        assert all(float(jnp.max(jnp.abs(d))) == 0 for d in jax.tree.leaves(deltas["feedback"]))
    else:
        _assert_close(deltas["feedback"], outputs["deltas"].get("feedback", {}), "feedback")
    _, signals, stats = steps.rule_inputs(model, rule, params, feedback, batch_stats,
                                          inputs["x"], inputs["labels"])
    _assert_close(signals["logits"], outputs["logits"], "logits")
    if batch_stats:
        _assert_close(stats, outputs["batch_stats"], "batch_stats")
