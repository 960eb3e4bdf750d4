"""The weight mirror (lra.weight_mirror): each mirrored synapse starts at an estimate of
the layer it stands for, read from the layer's response to noise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rec_lra_jax import conv, local, rules
from tests.helpers import mirror_oracle, rule_deltas


def test_weight_mirror_starts_each_synapse_near_the_layer_it_mirrors():
    """The weight mirror estimates each mirrored kernel (every conv synapse and the head's
    pool synapse) from the layer's response to noise: relative error about
    1 / sqrt(samples), an estimate rather than a copy (a random start is as far from the
    kernel as the kernel is long). With it the first step's deltas point along backprop's
    gradient: cosine > 0.85 on every conv layer."""
    with jax.enable_x64(True):
        model, variables, graph, oracle, x, labels = mirror_oracle(18, "cifar")
        params = variables["params"]
        signals = model.apply(variables, x, train=False)
        for samples in (0.0, 100.0):
            rule = rules.kolen_pollack(beta=1e-7)
            feedback = rules.wiring_of("kp").init(jax.random.key(1), signals, params,
                                                  weight_mirror=samples)
            assert set(feedback) == set(oracle)
            errors = [float(jnp.linalg.norm(feedback[n] - o) / jnp.linalg.norm(o))
                      for n, o in oracle.items()]
            if samples:
                assert 0.3 / samples**0.5 < min(errors) <= max(errors) < 2 / samples**0.5
            else:
                assert min(errors) > 0.9
        deltas = rule_deltas(rule, model, params, feedback, x, labels,
                             variables["batch_stats"])
        grads = rule_deltas("bp", model, params, {}, x, labels,
                            variables["batch_stats"])
        cosines = [float(jnp.vdot(d, g) / (jnp.linalg.norm(d) * jnp.linalg.norm(g)))
                   for d, g in zip(jax.tree.leaves(deltas["params"]),
                                   jax.tree.leaves(grads["params"]), strict=True)
                   if d.ndim == 4]
        assert min(cosines) > 0.85 and np.mean(cosines) > 0.95


def test_weight_mirror_needs_mirrored_synapses():
    """DFA's direct skips on a ResNet mirror no single layer: the option is refused. An
    MLP's adjacent synapses do (W^T of the layer above): the mirror starts them near it."""
    from rec_lra_jax import models, resnet  # noqa: PLC0415

    model = resnet.resnet(18, num_classes=10, width=4)
    x = jnp.ones((2, 16, 16, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    signals = model.apply(variables, x, train=False)
    with pytest.raises(ValueError, match="mirror a forward layer"):
        rules.wiring_of("dfa").init(jax.random.key(1), signals, variables["params"],
                                    weight_mirror=10.0)
    model = models.MLP(features=(8, 8, 3), activation="tanh")
    x = jnp.ones((2, 5))
    params = model.init(jax.random.key(0), x)["params"]
    signals = model.apply({"params": params}, x)
    synapses = rules.wiring_of("kp").init(jax.random.key(1), signals, params,
                                          activation="tanh", weight_mirror=2000.0)
    for name, above in (("layer_00", "layer_01"), ("layer_01", "layer_02")):
        w, b = params[above]["kernel"].T.ravel(), synapses[name].ravel()
        assert float(w @ b / (jnp.linalg.norm(w) * jnp.linalg.norm(b))) > 0.95, name


def test_weight_mirror_reports_progress(monkeypatch):
    """Full-width nets take minutes on a CPU: the weight mirror logs how many synapses it
    has finished (here after every one) before its final line, and the estimate is the
    same with and without the reports."""
    with jax.enable_x64(True):
        model, variables, graph, _, x, _ = mirror_oracle(18, "cifar")
        params = variables["params"]
        signals = model.apply(variables, x, train=False)
        synapses = {name: jnp.zeros(s.shape, jnp.float64) for name, s in graph.synapses.items()}
        quiet = local.weight_mirror(jax.random.key(1), graph, signals, params, synapses, 4.0)
        lines = []
        monkeypatch.setattr(local, "_MIRROR_REPORT_S", 0.0)
        monkeypatch.setattr(local.logging, "info", lambda msg, *args: lines.append(msg % args))
        reported = local.weight_mirror(jax.random.key(1), graph, signals, params, synapses,
                                       4.0)
    mirrored = sum(local.mirrored_layer(graph, s) is not None for s in graph.synapses.values())
    progress = [line.split()[2] for line in lines if "synapses in" in line]
    assert mirrored > 10 and progress == [f"{k}/{mirrored}" for k in range(1, mirrored)]
    assert lines[-1].startswith("Weight mirror: done in")
    jax.tree.map(np.testing.assert_array_equal, quiet, reported)


@pytest.mark.parametrize("strides,chunk", [(1, 1 << 24), (2, 1 << 24), (1, 2048)])
def test_conv_mirror_is_unbiased_in_one_chunk_or_many(strides, chunk):
    """The estimate's relative error is about 1 / sqrt(samples), with the padded borders
    counted, whether the noise comes in one draw or in chunks (here 8 x 8 x 4 inputs, 64
    per chunk)."""
    kernel = jax.random.normal(jax.random.key(0), (3, 3, 4, 8))
    for samples in (25.0, 400.0):
        estimate = local.conv_mirror(jax.random.key(1), kernel, samples, (8, 8, 4), strides, 1,
                                     chunk)
        error = float(jnp.linalg.norm(estimate - kernel) / jnp.linalg.norm(kernel))
        assert 0.3 / samples**0.5 < error < 2 / samples**0.5


@pytest.mark.parametrize("in_hw,strides", [(1, 1), (2, 2), (1, 2)])
def test_conv_mirror_on_maps_smaller_than_the_kernel(in_hw, strides):
    """On small maps some taps never overlap the input (a 3x3 conv on a 1x1 map, the
    padded edge of a stride-2 conv on 2x2): they cannot be observed, never act, and the
    estimate holds 0 there; the taps that act are estimated as on large maps. (Dividing by
    their count of 0 gave NaN, and the ImageNet stem at 32x32 diverged at its first step.)"""
    kernel = jax.random.normal(jax.random.key(0), (3, 3, 4, 8))
    estimate = local.conv_mirror(jax.random.key(1), kernel, 400.0, (in_hw, in_hw, 4), strides, 1)
    assert np.all(np.isfinite(np.asarray(estimate)))
    counts = local._tap_counts(kernel.shape, (in_hw, in_hw, 4),
                               (1, (in_hw + 2 - 3) // strides + 1,
                                (in_hw + 2 - 3) // strides + 1, 8), strides, 1)[:, :, 0, 0]
    seen = counts > 0
    assert 0 < seen.sum() < 9
    np.testing.assert_array_equal(np.asarray(estimate)[~seen], 0.0)
    error = float(jnp.linalg.norm(estimate[seen] - kernel[seen]) / jnp.linalg.norm(kernel[seen]))
    assert error < 2 / 400.0**0.5
    # Unseen taps never act: the conv with the estimate matches the conv with the kernel.
    x = jax.random.normal(jax.random.key(2), (2, in_hw, in_hw, 4))
    exact = conv.conv(x, kernel, strides=strides, padding=1)
    masked = conv.conv(x, jnp.where(seen[:, :, None, None], kernel, 0.0), strides=strides,
                       padding=1)
    np.testing.assert_allclose(masked, exact, rtol=1e-5, atol=1e-5)


def test_dense_mirror_chunks_draw_the_same_noise():
    """The head's pool-synapse mirror (kernel transposed) is unbiased, and drawing its
    noise in chunks (of 3 rows here, the last one short) gives the one-draw estimate."""
    kernel = jax.random.normal(jax.random.key(0), (16, 10))
    whole = local.dense_mirror(jax.random.key(1), kernel, 100.0)
    chunked = local.dense_mirror(jax.random.key(1), kernel, 100.0, chunk_elements=3 * 16)
    np.testing.assert_allclose(chunked, whole, rtol=1e-4, atol=1e-4)
    error = float(jnp.linalg.norm(whole - kernel.T) / jnp.linalg.norm(kernel))
    assert 0.03 < error < 0.2
