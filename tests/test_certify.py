"""The weight-transport certificate: positive cases, negative controls, the command."""

import os
import subprocess
import sys

import pytest

from configs import fmnist_mlp, fmnist_resnet18
from rec_lra_jax import builder, certify, resnet_rules, rules

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


def test_mlp_backprop_fails_with_layer_and_op():
    cert = builder.certify_config(_config(fmnist_mlp, "bp"))
    assert not cert.certified
    text = "\n".join(cert.violations)
    assert "layer 'layer_01'" in text and "dot_general" in text
    assert "differentiation through the network: jax.grad" in text
    # The first layer's W^T only reaches the input, which has no update: not transport.
    assert "layer 'layer_00'" not in text


def _planted_mlp_rule():
    """LRA-E whose error synapses are the next layer's W^T: planted weight transport."""
    base = rules.lra_e()

    def deltas(params, feedback, x, labels, *, model, batch_stats=None):
        names = sorted(params)
        planted = {names[i]: params[names[i + 1]]["kernel"].T for i in range(len(names) - 1)}
        return base.deltas(params, planted, x, labels, model=model)

    return rules.UpdateRule(base.init, deltas)


def test_mlp_planted_transpose_fails():
    cert = builder.certify_config(_config(fmnist_mlp, "lra_e"), rule=_planted_mlp_rule())
    assert not cert.certified
    assert any("layer 'layer_02'" in v for v in cert.violations)
    # No autodiff is involved: (a) alone catches it.
    assert not any("differentiation" in v for v in cert.violations)


@pytest.mark.parametrize("rule", ["rec_lra", "fa", "dfa"])
def test_resnet_local_rules_certified(rule):
    cert = builder.certify_config(_config(fmnist_resnet18, rule), input_shape=(8, 8, 1))
    assert cert.certified, cert.violations


@pytest.mark.parametrize("rule,op", [("bp", "conv_general_dilated"),
                                     ("sign_symmetry", "conv_general_dilated")])
def test_resnet_transport_rules_fail(rule, op):
    cert = builder.certify_config(_config(fmnist_resnet18, rule), input_shape=(8, 8, 1))
    assert not cert.certified
    assert any("block_00_conv2" in v and op in v for v in cert.violations)


def test_resnet_planted_conv_transpose_fails():
    """rec-LRA whose inner synapse is conv2's own kernel (W^T through conv-transpose)."""
    base = resnet_rules.resnet_rec_lra()

    def deltas(params, feedback, x, labels, *, model, batch_stats=None):
        planted = dict(feedback)
        planted["block_03_conv1"] = params["block_03_conv2"]["conv"]["kernel"]
        return base.deltas(params, planted, x, labels, model=model, batch_stats=batch_stats)

    cert = builder.certify_config(_config(fmnist_resnet18, "rec_lra"), input_shape=(8, 8, 1),
                                rule=rules.UpdateRule(base.init, deltas))
    assert not cert.certified
    assert len(cert.violations) == 1
    assert "block_03_conv2" in cert.violations[0]
    assert "block_03_conv1" in cert.violations[0]


def test_planted_autodiff_through_activations_fails():
    """A vjp through the upper layers w.r.t. activations (closure over params) is caught."""
    base = rules.lra_e()

    def deltas(params, feedback, x, labels, *, model, batch_stats=None):
        import jax  # noqa: PLC0415

        out, aux = base.deltas(params, feedback, x, labels, model=model)
        _, vjp = jax.vjp(lambda z: z @ params["layer_03"]["kernel"], aux["errors"][1])
        out["params"]["layer_00"]["bias"] = out["params"]["layer_00"]["bias"] * 0 + vjp(
            aux["errors"][-1])[0].mean()
        return out, aux

    cert = builder.certify_config(_config(fmnist_mlp, "lra_e"),
                                rule=rules.UpdateRule(base.init, deltas))
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
    bad = subprocess.run([sys.executable, "-m", "experiments.certify",
                          "--config=configs/fmnist_mlp.py:smoke", "--config.rule=bp"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1
    assert "NOT CERTIFIED" in bad.stdout and "layer_01" in bad.stdout
