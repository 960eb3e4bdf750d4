"""Wirings as data: target hops, module="stage", block-local losses, regressed skips, and
the Kolen-Pollack chain (rule kp) named for what it computes."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar10_resnet18
from experiments import wiring as wiring_command
from rec_lra_jax import builder, conv, local, resnet, rules, steps, sweep
from rec_lra_jax import wiring as wiring_lib
from rec_lra_jax.config_schema import ConfigError
from rec_lra_jax.wiring import Wiring
from tests.helpers import rule_deltas, smoke_config, tied_feedback, tiny_mlp


@functools.cache
def _resnet(depth=18, stem="cifar", size=16, batch=4):
    """A width-4 ResNet, its variables, signals, inputs and labels (cached: read only)."""
    model = resnet.resnet(depth, num_classes=10, width=4, stem=stem)
    x = jax.random.normal(jax.random.key(2), (batch, size, size, 3))
    labels = jax.nn.one_hot(jnp.arange(batch) % 10, 10)
    variables = model.init(jax.random.key(0), x, train=False)
    signals = model.apply(variables, x, train=False)
    return model, variables, signals, x, labels


@pytest.mark.parametrize("wiring,hops", [
    (Wiring(), 2),  # the paper's: block outputs from e_out, inner convs from the conv above
    (Wiring(depth=1), 1),
    (Wiring(depth=3), 3),
    (Wiring(module="stage"), 5),  # 4 units per stage + the stem in stage 1
    (Wiring(module="stage", local_loss="only", local_loss_grid=2), 5),
    (Wiring(local_loss="only", local_loss_grid=2), 2),
    # a hidden layer in the readout is one more hop: the stem, last in stage 1, is at 6
    (Wiring(module="stage", local_loss="only", local_loss_grid=2, local_loss_hidden=8), 6),
    # the stem its own module: stage 1's chain ends at block_00_conv1, the hidden readout
    # fits in 5
    (Wiring(module="stage", stem_module=True, local_loss="only", local_loss_grid=2), 4),
    (Wiring(module="stage", stem_module=True, local_loss="only", local_loss_grid=2,
            local_loss_hidden=8), 5),
    (Wiring(module="stage", local_loss="only", local_loss_grid=2, inner_loss=True), 5),
    (Wiring(skip_learning="regress"), 3),  # teachers one hop behind the targets
    (Wiring(module="stage", skip_learning="regress"), 5),
    (Wiring("transpose"), 17),  # backprop's: every weight layer below the head
    # shortcuts only inside a stage: a block 1 hop below the next, its conv1 one more
    (Wiring(module="stage", chain="shortcut", local_loss="only", local_loss_grid=2), 3),
    # two stages a module: stage 3's end through block_06's projection at 3, block_04 at
    # 4, its conv1 at 5; stage 2's end reads its readout
    (Wiring(module="stage", chain="shortcut", module_stages=2, local_loss="only",
            local_loss_grid=2), 5),
    (Wiring(module="stage", module_stages=2, local_loss="only", local_loss_grid=2), 9),
])
def test_target_hops_on_resnet18(wiring, hops):
    _, variables, signals, _, _ = _resnet()
    graph = wiring_lib.build(wiring, signals, variables["params"], None)
    assert wiring_lib.critical_path(graph) == hops


def test_stage_module_chains_inside_stages_only():
    """Stage ends (and the last block, through the head) read the output error; every other
    unit reads the layers directly above it in its stage."""
    _, variables, signals, _, _ = _resnet()
    graph = wiring_lib.build(Wiring(module="stage"), signals, variables["params"], None)
    from_output = {g.target for g in graph.synapses.values() if g.source == ("unit", "head")}
    assert from_output == {"block_01", "block_03", "block_05", "block_07"}
    hops = wiring_lib.hops(graph)
    assert [hops[f"block_0{i}"] for i in range(8)] == [3, 1, 3, 1, 3, 1, 3, 1]
    assert hops["stem"] == 5 and hops["head"] == 0
    # The last block of a stage below a projection does not read the projection's synapse.
    assert not any(g.target == "block_01" and g.kind == "conv" for g in graph.synapses.values())


def test_stage_module_needs_skips_from_the_output():
    _, variables, signals, _, _ = _resnet()
    with pytest.raises(ValueError, match="module='stage'"):
        wiring_lib.build(Wiring(module="stage", skip_source="head"), signals,
                         variables["params"], None)
    config = smoke_config(cifar10_resnet18, **{"lra.skip_source": "head",
                                               "lra.module": "stage"})
    with pytest.raises(ConfigError, match="lra.module='stage'"):
        builder.validate(config)


def test_kolen_pollack_is_not_rec_lra():
    with pytest.raises(ValueError, match="kolen_pollack"):
        rules.rec_lra(wiring=Wiring("transpose"))
    config = smoke_config(cifar10_resnet18, **{"lra.skip_source": "mirror"})
    with pytest.raises(ConfigError, match="rule 'kp'"):
        builder.validate(config)


def test_the_synapse_init_once_called_lra_e_is_unit_and_old_names_are_told_so():
    """"lra_e" named N(0, 1) synapses and N(0, 0.1^2) forward weights; the synapse scheme is
    "unit" (the same draw), and the old name is refused saying so, in a config and in the
    library; model.init="lra_e" keeps its meaning."""
    from configs import fmnist_mlp  # noqa: PLC0415

    _, variables, signals, _, _ = _resnet(batch=2)
    wiring = Wiring(module="stage")
    with pytest.raises(ValueError, match="'unit' now"):
        wiring.init(jax.random.key(0), signals, variables["params"], feedback_init="lra_e")
    for key in ("lra.feedback_init", "lra.baseline_feedback_init"):
        config = smoke_config(fmnist_mlp, **{key: "lra_e"})
        with pytest.raises(ConfigError, match=f"{key}='lra_e'.*'unit' now"):
            builder.validate(config)
    model, params, x, _ = tiny_mlp(features=(64, 64, 64, 10), input_dim=32)
    signals = model.apply({"params": params}, x)
    assert wiring_lib.build(Wiring(), signals, params, jnp.tanh).feedback_init == "unit"
    unit = Wiring().init(jax.random.key(3), signals, params, activation="tanh")  # N(0, 1)
    assert 0.9 < float(jnp.std(jnp.concatenate([v.ravel() for v in unit.values()]))) < 1.1
    builder.validate(smoke_config(fmnist_mlp, **{"model.init": "lra_e"}))


def test_kolen_pollack_on_an_mlp_with_tied_synapses_is_backprop():
    """The property docs/algorithm.md states: with synapses equal to the forward kernels'
    transposes, errors rescaled by 1/beta and a small beta, kp's deltas are backprop's
    gradient (the chain is backprop's path through W^T)."""
    with jax.enable_x64(True):
        model, params, x, labels = tiny_mlp(dtype=jnp.float64)
        feedback = tied_feedback(params, (2, 3, 4))
        deltas = rule_deltas(rules.kolen_pollack(beta=1e-7, activation="tanh"), model, params,
                             feedback, x, labels)
        grads = rule_deltas("bp", model, params, {}, x, labels)
        for delta, grad in zip(jax.tree.leaves(deltas["params"]),
                               jax.tree.leaves(grads["params"]), strict=True):
            np.testing.assert_allclose(delta, grad, rtol=0, atol=1e-6 * np.abs(grad).max())


def test_local_loss_readout_and_its_synapse_stay_transposes():
    """A block-local loss: the readout A and the pool synapse carrying its error back start
    at zero and get transposed deltas, so under any optimizer that treats entries alike
    (AdamW, SGD) the synapse stays A^T without reading it; the readout's delta is its own
    cross-entropy's gradient."""
    model, variables, signals, x, labels = _resnet()
    wiring = Wiring(module="stage", local_loss="only", local_loss_grid=2)
    rule = rules.rec_lra(wiring=wiring,
                         rescale=True)
    fb = wiring.init(jax.random.key(1), signals, variables["params"])
    assert float(jnp.abs(fb["block_03_readout"]).max()) == 0 == float(jnp.abs(fb["block_03"]).max())
    fb = dict(fb, block_03_readout=0.1 * jax.random.normal(jax.random.key(4),
                                                           fb["block_03_readout"].shape))
    trainables = {"params": variables["params"], "feedback": fb}
    deltas, _ = rule.update(trainables, rule.init(trainables), trainables, signals=signals,
                            labels=labels)
    for b in ("block_01", "block_03", "block_05"):
        np.testing.assert_allclose(deltas["feedback"][b], deltas["feedback"][f"{b}_readout"].T,
                                   rtol=1e-5, atol=1e-8)
    pooled = conv.grid_pool(signals["blocks"]["block_03"]["post"], 2)
    grad = jax.grad(lambda a: rules.cross_entropy(pooled @ a, labels))(fb["block_03_readout"])
    np.testing.assert_allclose(deltas["feedback"]["block_03_readout"], grad, rtol=1e-4,
                               atol=1e-7)
    assert float(jnp.abs(grad).max()) > 0


def test_grid_pool_adjoint_is_its_transpose():
    z = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    d = jax.random.normal(jax.random.key(1), (2, 2 * 2 * 3))
    lhs = jnp.sum(conv.grid_pool(z, 2) * d)
    rhs = jnp.sum(z * conv.grid_pool_adjoint(d, z.shape, 2))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-5)
    np.testing.assert_allclose(conv.grid_pool(z, 1), jnp.mean(z, axis=(1, 2)), rtol=1e-6)


def test_regressed_skip_learns_to_predict_its_teacher():
    """skip_learning="regress": a unit's teacher is what the layers above would carry to it
    (through synapses shaped like them), never a target, and its skip synapse's delta is
    the gradient of ||e_out E - teacher||^2 / 2B in E."""
    _, variables, signals, _, labels = _resnet()
    params = variables["params"]
    wiring = Wiring(module="stage", skip_learning="regress")
    graph = wiring_lib.build(wiring, signals, params, None)
    assert graph.units["block_05"].teach == ("block_05_teach", "block_05_teach_skip")
    assert "block_05_teach" not in wiring_lib.drives(graph.units["block_05"])
    feedback = wiring.init(jax.random.key(1), signals, params)
    assert float(jnp.abs(feedback["block_05"]).max()) == 0  # predicts nothing at first
    feedback = dict(feedback, block_05=0.01 * jax.random.normal(
        jax.random.key(3), feedback["block_05"].shape))
    errors = sweep.run(graph, signals, labels, feedback, beta=0.05, rescale=True)
    e_out, teacher = errors.units["head"], errors.teachers["block_05"]
    assert teacher.shape == signals["blocks"]["block_05"]["post"].shape
    assert float(jnp.abs(teacher).max()) > 0
    deltas = local.synapse_deltas(graph, signals, errors, feedback=feedback)
    loss = lambda E: 0.5 * jnp.sum(
        (sweep.carry(graph.synapses["block_05"], E, e_out, teacher.shape) - teacher) ** 2
    ) / e_out.shape[0]
    grad = jax.grad(loss)(feedback["block_05"])
    np.testing.assert_allclose(deltas["block_05"], grad, rtol=1e-4,
                               atol=1e-5 * float(jnp.abs(grad).max()))
    # The teacher synapses learn like the layers they mirror (Kolen-Pollack).
    np.testing.assert_allclose(
        deltas["block_05_teach"],
        local.correlate(graph.synapses["block_05_teach"], signals["blocks"]["block_05"]["post"],
                        errors.sources["block_05_teach"], 1.0), rtol=1e-6)


def test_regress_and_local_loss_configs_are_checked():
    config = smoke_config(cifar10_resnet18, **{"lra.skip_learning": "regress",
                                               "lra.local_loss": "only",
                                               "lra.skip_source": "dense",
                                               "lra.module": "stage"})
    with pytest.raises(ConfigError, match="skip_learning='regress'"):
        builder.validate(config)
    config = smoke_config(cifar10_resnet18, **{"lra.local_loss": "mixed",
                                               "lra.feedback_rule": "fixed"})
    with pytest.raises(ConfigError, match="lra.local_loss needs learned synapses"):
        builder.validate(config)


def test_hidden_readout_keeps_its_synapses_transposed():
    """A readout with a hidden layer: A is random and its pool synapse starts as A^T, A_out
    and A_back start at zero; each pair gets transposed deltas, so they stay transposes."""
    model, variables, signals, x, labels = _resnet()
    wiring = Wiring(module="stage", local_loss="only", local_loss_grid=2, local_loss_hidden=8)
    rule = rules.rec_lra(wiring=wiring, rescale=True)
    fb = wiring.init(jax.random.key(1), signals, variables["params"])
    assert fb["block_03_readout"].shape == (2 * 2 * 8, 8)  # stage 2 of width 4: 8 channels
    assert float(jnp.abs(fb["block_03_readout_out"]).max()) == 0
    fb = {k: v + 0.05 * jax.random.normal(jax.random.key(9), v.shape) if k.endswith("_out")
          else v for k, v in fb.items()}
    fb.update({f"{b}_readout_back": fb[f"{b}_readout_out"].T
               for b in ("block_01", "block_03", "block_05")})
    trainables = {"params": variables["params"], "feedback": fb}
    deltas, _ = rule.update(trainables, rule.init(trainables), trainables, signals=signals,
                            labels=labels)
    d = deltas["feedback"]
    for b in ("block_01", "block_03", "block_05"):
        np.testing.assert_allclose(fb[b], fb[f"{b}_readout"].T)
        np.testing.assert_allclose(d[b], d[f"{b}_readout"].T, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(d[f"{b}_readout_back"], d[f"{b}_readout_out"].T,
                                   rtol=1e-5, atol=1e-8)
        assert float(jnp.abs(d[f"{b}_readout"]).max()) > 0


def test_reconstruction_decoder_is_a_local_loss_with_a_kolen_pollack_synapse():
    """local_loss_recon: each stage end's decoder D (3x3 conv of its map, upsampled to the
    input's size) learns the gradient of ||x_hat - x||^2 / 2B; its "upconv" synapse gets the
    same delta and carries the error back as the exact adjoint of z -> conv(upsample(z), E);
    the unit's drive is the readout's plus that displacement scaled to weight x its norm."""
    _, variables, signals, x, labels = _resnet()
    wiring = Wiring(module="stage", local_loss="only", local_loss_grid=2, local_loss_recon=0.5)
    graph = wiring_lib.build(wiring, signals, variables["params"], None)
    assert wiring_lib.critical_path(graph) == 5  # same hops as the readout alone
    decoder = graph.decoders["block_03_decoder"]
    assert decoder.factor == 2 and decoder.shape == (3, 3, 8, 3)  # 8x8 map of a 16x16 input
    assert wiring_lib.drives(graph.units["block_03"]) == ("block_03", "block_03_recon")
    fb = wiring.init(jax.random.key(1), signals, variables["params"])
    assert float(jnp.abs(fb["block_03_decoder"]).max()) == 0 == float(
        jnp.abs(fb["block_03_recon"]).max())
    D = 0.1 * jax.random.normal(jax.random.key(5), decoder.shape)
    A = 0.1 * jax.random.normal(jax.random.key(6), fb["block_03_readout"].shape)
    fb = dict(fb, block_03_decoder=D, block_03_recon=D, block_03_readout=A, block_03=A.T)
    errors = sweep.run(graph, signals, labels, fb, beta=0.05, rescale=True)
    z = signals["blocks"]["block_03"]["post"]
    decode = lambda z_, k: conv.conv(conv.upsample(z_, 2), k, padding=1)
    e_x = decode(z, D) - x
    np.testing.assert_allclose(errors.units["block_03_decoder"], e_x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(errors.displacements["block_03_recon"],
                               jax.vjp(lambda z_: decode(z_, D), z)[1](e_x)[0],
                               rtol=1e-4, atol=1e-5)
    deltas = local.synapse_deltas(graph, signals, errors, feedback=fb)
    grad = jax.grad(lambda k: 0.5 * jnp.sum((decode(z, k) - x) ** 2) / x.shape[0])(D)
    np.testing.assert_allclose(deltas["block_03_decoder"], grad, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(deltas["block_03_recon"], grad, rtol=1e-4, atol=1e-6)
    # The drive: d_readout + 0.5 |d_readout| d_recon / |d_recon|, through the target.
    d_read, d_rec = errors.displacements["block_03"], errors.displacements["block_03_recon"]
    d = d_read + 0.5 * jnp.linalg.norm(d_read) * d_rec / jnp.linalg.norm(d_rec)
    pre = signals["blocks"]["block_03"]["pre"]
    expected = (z - jax.nn.relu(pre - 0.05 * d)) / 0.05
    np.testing.assert_allclose(errors.units["block_03"], expected, rtol=1e-4, atol=1e-5)
    config = smoke_config(cifar10_resnet18, **{"lra.local_loss": "none",
                                               "lra.local_loss_recon": 1.0})
    with pytest.raises(ConfigError, match="local_loss_recon"):
        builder.validate(config)


def test_similarity_term_is_predsim_through_kolen_pollack_synapses():
    """local_loss_sim=beta: with the readout's pool synapse A^T and the similarity conv's
    synapse S (they start so), a stage end's drive is B / (1 - beta) times the gradient in
    z of Nokland & Eidnes's predsim loss, (1 - beta) CE(pool(z) A) + beta
    mean((R(conv(z, S)) - R(y))^2), R written out here from their definition; A and S get
    that loss's gradient over (1 - beta), S's synapse the same delta as S."""
    _, variables, signals, _, labels = _resnet(batch=6)
    beta = 0.9
    wiring = Wiring(module="stage", local_loss="only", local_loss_grid=2, local_loss_sim=beta)
    graph = wiring_lib.build(wiring, signals, variables["params"], None)
    assert wiring_lib.critical_path(graph) == 5  # same hops as the readout alone
    assert wiring_lib.drives(graph.units["block_03"]) == ("block_03", "block_03_sim")
    fb = wiring.init(jax.random.key(1), signals, variables["params"])
    S = fb["block_03_readout_sim"]
    assert S.shape == (3, 3, 8, 8) and float(jnp.abs(S).max()) > 0
    np.testing.assert_array_equal(fb["block_03_sim"], S)
    A = 0.1 * jax.random.normal(jax.random.key(6), fb["block_03_readout"].shape)
    fb = dict(fb, block_03_readout=A, block_03=A.T)
    z = signals["blocks"]["block_03"]["post"]
    batch = z.shape[0]

    def R(x):  # Nokland & Eidnes's similarity_matrix: std over positions, centre, cosine
        if x.ndim == 4:
            x = jnp.sqrt(jnp.var(x.reshape(batch, -1, x.shape[-1]), axis=1, ddof=1) + 1e-8)
        x = x - x.mean(axis=1, keepdims=True)
        x = x / (1e-8 + jnp.linalg.norm(x, axis=1, keepdims=True))
        return x @ x.T

    def predsim(z_, a, s):
        logits = conv.grid_pool(z_, 2) @ a
        pred = -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits), axis=-1))
        sim = jnp.mean((R(conv.conv(z_, s, padding=1)) - R(labels)) ** 2)
        return (1 - beta) * pred + beta * sim

    errors = sweep.run(graph, signals, labels, fb, beta=0.05, rescale=True)
    d = errors.displacements["block_03"] + errors.displacements["block_03_sim"]
    grad_z, grad_a, grad_s = jax.grad(predsim, argnums=(0, 1, 2))(z, A, S)
    np.testing.assert_allclose(d, batch / (1 - beta) * grad_z, rtol=1e-4, atol=1e-6)
    assert float(jnp.linalg.norm(errors.displacements["block_03_sim"])) > 0.1 * float(
        jnp.linalg.norm(d))  # the similarity term is a real part of the drive
    pre = signals["blocks"]["block_03"]["pre"]
    np.testing.assert_allclose(errors.units["block_03"],
                               (z - jax.nn.relu(pre - 0.05 * d)) / 0.05, rtol=1e-4, atol=1e-5)
    deltas = local.synapse_deltas(graph, signals, errors, feedback=fb)
    np.testing.assert_allclose(deltas["block_03_readout"], grad_a / (1 - beta), rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(deltas["block_03_readout_sim"], grad_s / (1 - beta),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(deltas["block_03_sim"], deltas["block_03_readout_sim"])
    for flags, match in (({"lra.local_loss": "none"}, "local_loss_sim"),
                         ({"lra.local_loss": "only"}, "below 1")):
        config = smoke_config(cifar10_resnet18, **flags, **{"lra.local_loss_sim": 1.0})
        with pytest.raises(ConfigError, match=match):
            builder.validate(config)


def test_distilled_readouts_are_the_cross_entropy_toward_the_mixed_target():
    """local_loss_distill=a: a readout's target is (1 - a) y + a softmax(logits) (a < 0:
    its error plus |a| e_L); with its pool synapse A^T the stage end's drive is batch times
    the gradient in z of that cross entropy, A gets its gradient, the output's own error
    is unchanged, hops the same."""
    for a in (0.7, -0.5):
        _check_distilled(a)
    for flags, match in (({"lra.local_loss": "none"}, "local_loss_distill"),
                         ({"lra.local_loss": "only"}, "<= 1")):
        config = smoke_config(cifar10_resnet18, **flags, **{"lra.local_loss_distill": 1.5})
        with pytest.raises(ConfigError, match=match):
            builder.validate(config)


def _check_distilled(a):
    _, variables, signals, _, labels = _resnet(batch=6)
    wiring = Wiring(module="stage", local_loss="only", local_loss_grid=2, local_loss_distill=a)
    graph = wiring_lib.build(wiring, signals, variables["params"], None)
    plain = wiring_lib.build(dataclasses.replace(wiring, local_loss_distill=0.0), signals,
                             variables["params"], None)
    assert wiring_lib.critical_path(graph) == wiring_lib.critical_path(plain) == 5
    fb = wiring.init(jax.random.key(1), signals, variables["params"])
    A = 0.1 * jax.random.normal(jax.random.key(6), fb["block_03_readout"].shape)
    fb = dict(fb, block_03_readout=A, block_03=A.T)
    z = signals["blocks"]["block_03"]["post"]
    target = (1 - a) * labels + a * jax.nn.softmax(signals["logits"])
    assert float(jnp.abs(target - labels).max()) > 0.1  # the output is a real part of it

    def ce(z_, a_):
        logits = conv.grid_pool(z_, 2) @ a_
        return -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits), axis=-1))

    errors = sweep.run(graph, signals, labels, fb, beta=0.05, rescale=True)
    grad_z, grad_a = jax.grad(ce, argnums=(0, 1))(z, A)
    np.testing.assert_allclose(errors.displacements["block_03"], z.shape[0] * grad_z,
                               rtol=1e-4, atol=1e-6)
    deltas = local.synapse_deltas(graph, signals, errors, feedback=fb)
    np.testing.assert_allclose(deltas["block_03_readout"], grad_a, rtol=1e-4, atol=1e-6)
    undistilled = sweep.run(plain, signals, labels, fb, beta=0.05, rescale=True)
    output = next(n for n, u in graph.units.items() if u.drive is None)
    np.testing.assert_array_equal(errors.units[output], undistilled.units[output])
    if a < 0:  # e_r + |a| e_L, carried by the readout's synapse
        np.testing.assert_allclose(errors.units["block_03_readout"],
                                   undistilled.units["block_03_readout"] - a * (
                                       errors.units[output]), rtol=1e-5, atol=1e-7)


def test_per_readout_distill_sets_each_readouts_share_from_the_input_up():
    """local_loss_distill_each=(a1, a2, ...): readout i (from the input up) takes a_i in
    place of local_loss_distill: e_L enters stage 1's readout error and not stage 3's; a
    count that does not match the readouts is refused, naming them."""
    _, variables, signals, _, labels = _resnet(batch=6)
    base = Wiring(module="stage", local_loss="only", local_loss_grid=2)
    graph = wiring_lib.build(dataclasses.replace(base, local_loss_distill_each=(-1.0, 0.0, -0.5)),
                             signals, variables["params"], None)
    shares = {name: r.distill for name, r in graph.readouts.items()}
    assert shares == {"block_01_readout": -1.0, "block_03_readout": 0.0,
                      "block_05_readout": -0.5}, shares
    plain = wiring_lib.build(base, signals, variables["params"], None)
    fb = base.init(jax.random.key(1), signals, variables["params"])
    errors = sweep.run(graph, signals, labels, fb, beta=0.05, rescale=True)
    undistilled = sweep.run(plain, signals, labels, fb, beta=0.05, rescale=True)
    output = next(n for n, u in graph.units.items() if u.drive is None)
    e_l = errors.units[output]
    for name, a in shares.items():
        np.testing.assert_allclose(errors.units[name], undistilled.units[name] - a * e_l,
                                   rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="3 readouts, from the input up: block_01_readout"):
        wiring_lib.build(dataclasses.replace(base, local_loss_distill_each=(-1.0,)), signals,
                         variables["params"], None)
    config = smoke_config(cifar10_resnet18, **{"lra.local_loss_distill_each": (-1.0, 0.0),
                                               "lra.local_loss": "only"})
    with pytest.raises(ConfigError, match="3 readouts"):
        builder.validate(config)
    config = smoke_config(cifar10_resnet18, **{"lra.local_loss_distill_each": (-2.0,)})
    with pytest.raises(ConfigError, match=r"\[-1, 1\]"):
        builder.validate(config)


def test_conv_readout_goes_where_it_adds_no_hop_and_is_its_cross_entropy_gradient():
    """local_loss_conv=C: a 3x3 ReLU conv before the readout's pooling, only in readouts
    whose units are fewer hops deep than the critical path (stages 2 and 3: stage 1's
    chain of 5 sets it). With A_back = A^T and the synapse = K (they start so), the
    stage end's drive is B times the cross-entropy's gradient in z through the conv
    readout; A, K get that gradient, A_back and the synapse their transposes / copies."""
    _, variables, signals, _, labels = _resnet(batch=6)
    wiring = Wiring(module="stage", local_loss="only", local_loss_grid=2, local_loss_conv=6)
    graph = wiring_lib.build(wiring, signals, variables["params"], None)
    assert wiring_lib.critical_path(graph) == 5
    assert {n: r.conv for n, r in graph.readouts.items()} == {
        "block_01_readout": 0, "block_03_readout": 6, "block_05_readout": 6}
    assert wiring_lib.hops(graph)["block_03"] == 2 and wiring_lib.hops(graph)["block_01"] == 1
    assert graph.synapses["block_03"].kind == "conv"
    assert graph.synapses["block_03"].shape == (3, 3, 8, 6)
    fb = wiring.init(jax.random.key(1), signals, variables["params"])
    K = fb["block_03_readout_conv"]
    assert float(jnp.abs(K).max()) > 0 and float(jnp.abs(fb["block_03_readout"]).max()) == 0
    np.testing.assert_array_equal(fb["block_03"], K)
    A = 0.3 * jax.random.normal(jax.random.key(6), fb["block_03_readout"].shape)
    fb = dict(fb, block_03_readout=A, block_03_readout_back=A.T)
    z = signals["blocks"]["block_03"]["post"]
    batch = z.shape[0]

    def ce(z_, a, k):
        logits = conv.grid_pool(jax.nn.relu(conv.conv(z_, k, padding=1)), 2) @ a
        return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits), axis=-1))

    errors = sweep.run(graph, signals, labels, fb, beta=0.05, rescale=True)
    grad_z, grad_a, grad_k = jax.grad(ce, argnums=(0, 1, 2))(z, A, K)
    np.testing.assert_allclose(errors.displacements["block_03"], batch * grad_z, rtol=1e-4,
                               atol=1e-6)
    deltas = local.synapse_deltas(graph, signals, errors, feedback=fb)
    np.testing.assert_allclose(deltas["block_03_readout"], grad_a, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(deltas["block_03_readout_back"], grad_a.T, rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(deltas["block_03_readout_conv"], grad_k, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(deltas["block_03"], grad_k, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="local_loss_conv"):
        Wiring(module="stage", local_loss="only", local_loss_conv=4, local_loss_hidden=8)
    config = smoke_config(cifar10_resnet18, **{"lra.local_loss": "none",
                                               "lra.local_loss_conv": 8})
    with pytest.raises(ConfigError, match="local_loss_conv"):
        builder.validate(config)


def test_stem_module_and_inner_loss_add_readouts_where_they_say():
    """stem_module: the stem reads its own readout instead of stage 1's chain; inner_loss:
    each block inside a stage reads its own readout beside the chain. Each new readout
    learns (nonzero delta) and its pool synapse gets the transposed delta."""
    _, variables, signals, _, labels = _resnet()
    wiring = Wiring(module="stage", local_loss="only", local_loss_grid=2, stem_module=True,
                    inner_loss=True)
    graph = wiring_lib.build(wiring, signals, variables["params"], None)
    assert set(graph.readouts) == {"stem_readout", "block_01_readout", "block_03_readout",
                                   "block_05_readout", "block_00_inner_readout",
                                   "block_02_inner_readout", "block_04_inner_readout",
                                   "block_06_inner_readout"}
    assert [graph.synapses[s].source for s in wiring_lib.drives(graph.units["stem"])] == [
        ("unit", "stem_readout")]
    sources = [graph.synapses[s].source for s in wiring_lib.drives(graph.units["block_02"])]
    assert ("unit", "block_02_inner_readout") in sources and ("unit", "block_03") in sources
    rule = rules.rec_lra(wiring=wiring, rescale=True)
    fb = wiring.init(jax.random.key(1), signals, variables["params"])
    trainables = {"params": variables["params"], "feedback": fb}
    deltas, _ = rule.update(trainables, rule.init(trainables), trainables, signals=signals,
                            labels=labels)
    for name in ("stem", "block_02_inner"):
        d = deltas["feedback"]
        assert float(jnp.abs(d[f"{name}_readout"]).max()) > 0
        np.testing.assert_allclose(d[name], d[f"{name}_readout"].T, rtol=1e-5, atol=1e-8)
    assert all(bool(jnp.isfinite(v).all()) for v in jax.tree.leaves(deltas))
    with pytest.raises(ValueError, match="stem_module"):
        Wiring(stem_module=True)
    with pytest.raises(ValueError, match="inner_loss"):
        Wiring(module="stage", inner_loss=True)


def test_perturbation_probe_estimates_the_averaged_jacobian_of_the_logits():
    """skip_learning="perturb": the probe's target mean(delta^T xi) is the logits' Jacobian
    in the block output averaged over the batch (float64, many probes averaged, against
    jax.jacfwd of a perturbed forward, which only this test may compute); a skip's delta
    pulls it toward that target; the stage ends, and only they, are probed."""
    with jax.enable_x64(True):
        model, variables, _, x, labels = _resnet()
        variables = jax.tree.map(lambda a: a.astype(jnp.float64), variables)
        x = x.astype(jnp.float64)
        signals, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
        name, sigma = "block_05", 1e-4  # stage 3: a 4x4x16 map

        def logits(p):
            out, _ = model.apply(variables, x, train=True, perturb={name: p},
                                 mutable=["batch_stats"])
            return out["logits"]

        zero = jnp.zeros_like(signals["blocks"][name]["post"])
        jac = jax.jacfwd(logits)(zero)  # (B, K, B, H, W, C)
        batch = x.shape[0]
        want = sum(jac[b, :, b].reshape(10, -1) for b in range(batch)) / batch
        draw = jax.jit(jax.vmap(lambda k: local.probe_regress(
            jnp.zeros_like(want), *steps.probe(model, variables["params"],
                                               variables["batch_stats"], x, signals, (name,),
                                               sigma, k)[name], -1.0)))
        # unbiased and noisy (cosine 0.85 with these 600 probes of 4 examples; it rises
        # toward 1 as probes accumulate: 0.57, 0.81, 0.91 at 300, 1200, 3000 on block_03)
        got = sum(draw(jax.random.split(jax.random.key(i), 300)).sum(0)
                  for i in range(2)) / 600
        cos = float(jnp.vdot(got, want) / (jnp.linalg.norm(got) * jnp.linalg.norm(want)))
        assert cos > 0.75, cos
        assert 0.8 < float(jnp.linalg.norm(got) / jnp.linalg.norm(want)) < 1.25
    wiring = Wiring(module="stage", local_loss="mixed", local_loss_grid=2,
                    skip_learning="perturb")
    _, variables, signals, _, _ = _resnet()
    graph = wiring_lib.build(wiring, signals, variables["params"], None)
    assert wiring_lib.perturbed(graph) == ("block_01", "block_03", "block_05")
    assert wiring_lib.critical_path(graph) == 5
    with pytest.raises(ValueError, match="skip_learning='perturb'"):
        Wiring(module="stage", local_loss="only", skip_learning="perturb")


def test_a_perturbation_wired_config_trains_and_its_skips_learn():
    config = smoke_config(cifar10_resnet18, **{
        "lra.module": "stage", "lra.local_loss": "mixed", "lra.local_loss_grid": 2,
        "lra.skip_learning": "perturb"})
    builder.validate(config)
    setup = builder.create_setup(config, input_shape=(16, 16, 3), num_classes=10,
                                 total_steps=4)
    assert setup.step_kwargs["probes"] == ("block_01", "block_03", "block_05")
    assert float(jnp.abs(setup.state.feedback["block_03"]).max()) == 0  # zero at start
    images = jax.random.uniform(jax.random.key(0), (2, 8, 16, 16, 3))
    labels = jnp.arange(16).reshape(2, 8) % 10
    state, metrics = setup.train_fn(setup.state, None, (images, labels))  # donates the state
    assert bool(metrics["state_finite"])
    assert float(jnp.abs(state.feedback["block_03"]).max()) > 0


@pytest.mark.parametrize("wiring,widest", [
    (Wiring(module="stage", local_loss="only", local_loss_grid=2), 4), (Wiring(), 9),
    (Wiring("transpose"), 1)])
def test_levels_partition_the_units_and_each_reads_only_lower_levels(wiring, widest):
    """wiring.levels: every unit once, at its target hops; a unit's drive reads errors of
    lower levels only (so a level can be computed side by side); groups refine levels."""
    _, variables, signals, _, _ = _resnet()
    graph = wiring_lib.build(wiring, signals, variables["params"], None)
    levels = wiring_lib.levels(graph)
    assert sorted(u for units in levels.values() for u in units) == sorted(graph.units)
    assert max(levels) == wiring_lib.critical_path(graph)
    assert max(len(units) for units in levels.values()) == widest
    level_of = {u: h for h, units in levels.items() for u in units}
    for name, unit in graph.units.items():
        for s in wiring_lib.drives(unit):
            kind, src = graph.synapses[s].source
            src = graph.layers[src].unit if kind == "layer" else src
            if src in graph.units:
                assert level_of[src] < level_of[name], (name, src)
    grouped = wiring_lib.groups(graph)
    assert sorted(u for units in grouped.values() for u in units) == sorted(graph.units)
    assert all(level_of[u] == key[0] for key, units in grouped.items() for u in units)


def test_the_wiring_command_reports_every_rules_critical_path():
    table = wiring_command.report(smoke_config(cifar10_resnet18), ["rec_lra", "dfa", "bp"])
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in table.splitlines()[2:]}
    assert rows["rec_lra"][2] == "5" and rows["dfa"][2] == "1" and rows["bp"][2] == "17"
    assert rows["dfa"][3] == "0:1 1:17" and rows["dfa"][4] == "17"
