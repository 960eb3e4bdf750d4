"""The weight-transport certificate: positive cases, negative controls, the command."""

import os
import subprocess
import sys

import optax
import pytest

from configs import fmnist_mlp, fmnist_resnet18
from rec_lra_jax import builder, certify, rules

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(module, rule):
    config = module.get_config("smoke")
    with config.unlocked():
        config.rule = rule
    return config


@pytest.mark.parametrize("rule", ["rec_lra", "lra_e", "fa", "dfa"])
def test_mlp_local_rules_certified(rule):
    cert = builder.certify_config(_config(fmnist_mlp, rule))
    assert cert.certified, cert.violations
    assert "forward kernels" in str(cert)


@pytest.mark.parametrize("rule", ["bp", "sign_symmetry"])
def test_mlp_transport_rules_fail_with_layer_and_op(rule):
    cert = builder.certify_config(_config(fmnist_mlp, rule))
    assert not cert.certified
    text = "\n".join(cert.violations)
    assert "layer 'layer_01'" in text and "dot_general" in text
    if rule == "bp":
        assert "differentiation through the network: jax.grad" in text
    # The first layer's W^T only reaches the input, which has no update: not transport.
    assert "layer 'layer_00'" not in text


def _planted(base, plant):
    """`base` whose update sees the synapses plant(params) instead of its own."""
    def update(updates, state, params, **extra):
        planted = {"params": params["params"], "feedback": plant(params)}
        return base.update(planted, state, planted, **extra)  # the trainables it would see

    return optax.GradientTransformationExtraArgs(base.init, update)


def _planted_mlp_rule():
    """LRA-E whose error synapses are the next layer's W^T: planted weight transport."""
    def plant(trainables):
        params = trainables["params"]
        names = sorted(params)
        return {names[i]: params[names[i + 1]]["kernel"].T for i in range(len(names) - 1)}

    return _planted(rules.lra_e(activation="tanh"), plant)


def test_mlp_planted_transpose_fails():
    cert = builder.certify_config(_config(fmnist_mlp, "lra_e"), rule=_planted_mlp_rule())
    assert not cert.certified
    assert any("layer 'layer_02'" in v for v in cert.violations)
    # No autodiff is involved: (a) alone catches it.
    assert not any("differentiation" in v for v in cert.violations)


@pytest.mark.parametrize("rule", ["rec_lra", "lra_e", "fa", "dfa"])
def test_resnet_local_rules_certified(rule):
    cert = builder.certify_config(_config(fmnist_resnet18, rule), input_shape=(8, 8, 1))
    assert cert.certified, cert.violations


def test_resnet_kolen_pollack_certified():
    """The Kolen-Pollack chain (rule kp) has backprop's structure, but its synapses are its
    own parameters: no forward weight reaches an update (the weight mirror only sets their
    start)."""
    config = _config(fmnist_resnet18, "kp")
    with config.unlocked():
        config.lra.weight_mirror = 10.0
    cert = builder.certify_config(config, input_shape=(8, 8, 1))
    assert cert.certified, cert.violations


@pytest.mark.parametrize("rule,op", [("bp", "conv_general_dilated"),
                                     ("sign_symmetry", "conv_general_dilated")])
def test_resnet_transport_rules_fail(rule, op):
    cert = builder.certify_config(_config(fmnist_resnet18, rule), input_shape=(8, 8, 1))
    assert not cert.certified
    assert any("block_00_conv2" in v and op in v for v in cert.violations)


def test_resnet_planted_conv_transpose_fails():
    """rec-LRA whose inner synapse is conv2's own kernel (W^T through conv-transpose)."""
    def plant(trainables):
        planted = dict(trainables["feedback"])
        planted["block_03_conv1"] = trainables["params"]["block_03_conv2"]["conv"]["kernel"]
        return planted

    cert = builder.certify_config(_config(fmnist_resnet18, "rec_lra"), input_shape=(8, 8, 1),
                                  rule=_planted(rules.rec_lra(), plant))
    assert not cert.certified
    assert len(cert.violations) == 1
    assert "block_03_conv2" in cert.violations[0]
    assert "block_03_conv1" in cert.violations[0]


def test_planted_autodiff_through_activations_fails():
    """A vjp through the upper layers w.r.t. activations (closure over params) is caught."""
    import jax  # noqa: PLC0415

    base = rules.lra_e(activation="tanh")

    def update(updates, state, params, *, signals, labels):
        out, state = base.update(updates, state, params, signals=signals, labels=labels)
        kernel = params["params"]["layer_03"]["kernel"]
        _, vjp = jax.vjp(lambda z: z @ kernel, signals["post"][2])
        out["params"]["layer_00"]["bias"] = out["params"]["layer_00"]["bias"] * 0 + vjp(
            labels)[0].mean()
        return out, state

    cert = builder.certify_config(_config(fmnist_mlp, "lra_e"),
                                  rule=optax.GradientTransformationExtraArgs(base.init, update))
    assert not cert.certified
    assert any("jax.vjp" in v for v in cert.violations)


def test_certificate_str():
    cert = certify.Certificate(False, ["r"], ["layer 'x': bad"])
    assert "NOT CERTIFIED" in str(cert) and "layer 'x'" in str(cert)


def test_certify_command_exit_codes():
    env = dict(os.environ, PYTHONPATH=REPO)
    ok = subprocess.run([sys.executable, "-m", "experiments.certify",
                         "--config=configs/fmnist_mlp.py:smoke"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "CERTIFIED" in ok.stdout
    # The MLP smoke: three hidden layers, modules of 2 (2 hops); backprop's path is 3 hops.
    assert "target hops 2 (backprop's: 3)" in ok.stdout, ok.stdout
    bad = subprocess.run([sys.executable, "-m", "experiments.certify",
                          "--config=configs/fmnist_mlp.py:smoke", "--config.rule=bp"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1
    assert "NOT CERTIFIED" in bad.stdout and "layer_01" in bad.stdout
