"""rec-LRA and the baselines on ResNets: structure, a hand-written sweep, BN, FA layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rec_lra_jax import conv, feedback_ops, resnet, rules, sweep
from rec_lra_jax.wiring import Wiring
from tests.helpers import mirror_oracle, rule_deltas


def _setup(depth, stem, wiring, size=16, batch=2, backward="exact", **model_kwargs):
    """(model, variables, feedback, x, labels); feedback from `wiring.init`, or with
    wiring None (an autodiff rule) the model's own fixed feedback kernels."""
    model = resnet.resnet(depth, num_classes=10, width=4, stem=stem, backward=backward,
                          **model_kwargs)
    x = jax.random.normal(jax.random.key(2), (batch, size, size, 3))
    labels = jax.nn.one_hot(jnp.arange(batch) % 10, 10)
    variables = model.init(jax.random.key(0), x, train=False)
    if wiring is None:
        feedback = model.init(jax.random.key(1), x, train=False).get("feedback", {})
    else:
        signals = model.apply(variables, x, train=False)
        feedback = wiring.init(jax.random.key(1), signals, variables["params"])
    return model, variables, feedback, x, labels


def _wired(wiring, **options):
    return lambda: (rules.rec_lra(wiring=wiring, **options), wiring)


RULES = {  # name: () -> (rule, its wiring)
    "rec_lra_dense": _wired(Wiring()),
    "rec_lra_channel": _wired(Wiring(skip_source="channel")),
    "rec_lra_head": _wired(Wiring(skip_source="head")),
    "rec_lra_depth1": _wired(Wiring(depth=1)),
    "rec_lra_depth3": _wired(Wiring(depth=3)),
    "rec_lra_stage": _wired(Wiring(module="stage"), rescale=True),
    "rec_lra_local": _wired(Wiring(module="stage", local_loss="mixed", local_loss_grid=2)),
    "kp": lambda: (rules.kolen_pollack(), rules.wiring_of("kp")),
    "lra_e": lambda: (rules.lra_e(), rules.wiring_of("lra_e")),
    "dfa": lambda: (rules.dfa(), rules.wiring_of("dfa")),
}


@pytest.mark.parametrize("depth,stem,rule", [
    (18, "cifar", "rec_lra_dense"), (18, "imagenet", "rec_lra_head"),
    (18, "cifar", "rec_lra_channel"), (18, "cifar", "rec_lra_depth1"), (18, "cifar", "dfa"),
    (50, "cifar", "rec_lra_head"), (50, "imagenet", "rec_lra_channel"),
    (18, "cifar", "rec_lra_depth3"), (50, "cifar", "rec_lra_depth3"), (18, "imagenet", "lra_e"),
    (18, "imagenet", "kp"), (50, "imagenet", "kp"), (18, "cifar", "rec_lra_stage"),
    (50, "imagenet", "rec_lra_stage"), (18, "cifar", "rec_lra_local"),
])
def test_deltas_match_params_and_feedback(depth, stem, rule):
    rule, wiring = RULES[rule]()
    model, variables, feedback, x, labels = _setup(depth, stem, wiring,
                                                   size=32 if stem == "imagenet" else 16)
    deltas = jax.eval_shape(lambda: rule_deltas(rule, model, variables["params"], feedback, x,
                                                labels, variables["batch_stats"]))
    shapes = lambda t: jax.tree.map(lambda a: a.shape, t)
    assert shapes(deltas["params"]) == shapes(variables["params"])
    assert shapes(deltas["feedback"]) == shapes(feedback)


def _hand_written(params, feedback, acts, labels, beta):
    """rec-LRA (dense source, head_last, depth 2, BN Jacobian) on a ResNet-18, written out
    block by block without the library's sweep."""
    B = labels.shape[0]
    e_L = jax.nn.softmax(acts["logits"]) - labels
    out = {"head": {"kernel": acts["head"]["input"].T @ e_L / B, "bias": e_L.mean(0)}}

    def bn_back(sig, e, scale):
        m = lambda a: a.mean((0, 1, 2))
        return scale * sig["inv_std"] * (e - m(e) - sig["xhat"] * m(e * sig["xhat"]))

    def layer(name, sig, e):
        e_c = bn_back(sig, e, params[name]["bn"]["scale"])
        k = params[name]["conv"]["kernel"]
        s = 1 if sig["input"].shape[1] == sig["conv"].shape[1] else 2
        dk = jax.vjp(lambda w: conv.conv(sig["input"], w, strides=s, padding=k.shape[0] // 2),
                     k)[1](e_c)[0] / B
        xh = sig["xhat"]
        out[name] = {"conv": {"kernel": dk}, "bn": {"scale": (e * xh).sum((0, 1, 2)) / B,
                                                     "bias": e.sum((0, 1, 2)) / B}}
        return e_c, s

    for b in range(8):
        name = f"block_{b:02d}"
        blk = acts["blocks"][name]
        u = blk["post"]
        if b == 7:
            d = jnp.broadcast_to((e_L @ feedback[name])[:, None, None, :] / (u.shape[1] ** 2),
                                 u.shape)
        else:
            d = (e_L @ feedback[name]).reshape(u.shape)
        e_b = u - jax.nn.relu(blk["pre"] - beta * d)
        e_c2, _ = layer(f"{name}_conv2", blk["conv2"], e_b)
        z1 = jax.nn.relu(blk["conv1"]["bn"])
        E = feedback[f"{name}_conv1"]
        d1 = jax.vjp(lambda z, E=E: conv.conv(z, E, strides=1, padding=1), z1)[1](e_c2)[0]
        layer(f"{name}_conv1", blk["conv1"], z1 - jax.nn.relu(blk["conv1"]["bn"] - beta * d1))
        if "proj" in blk:
            layer(f"{name}_proj", blk["proj"], e_b)
    u0 = acts["stem"]["post"]
    d0 = (e_L @ feedback["stem"]).reshape(u0.shape)
    layer("stem", acts["stem"], u0 - jax.nn.relu(acts["stem"]["bn"] - beta * d0))
    return out


def test_sweep_equals_hand_written_loop():
    rule = rules.rec_lra(beta=0.3)
    model, variables, feedback, x, labels = _setup(18, "cifar", Wiring(), batch=3)
    params = jax.tree.map(  # non-trivial BN scales, so the Jacobian's gain is exercised
        lambda p: p * 1.3 if p.ndim == 1 else p, variables["params"])
    acts, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                          train=True, mutable=["batch_stats"])
    got = rule_deltas(rule, model, params, feedback, x, labels, variables["batch_stats"])
    want = _hand_written(params, feedback, acts, labels, 0.3)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6),
                 got["params"], want)


def test_bn_jacobian_error_is_the_batchnorm_vjp():
    """bn_error="jacobian" equals the exact backward of the layer's own BatchNorm."""
    c = jax.random.normal(jax.random.key(0), (4, 5, 5, 3)) * 2 + 1
    scale, bias = jnp.asarray([0.5, 1.5, 2.0]), jnp.asarray([0.1, -0.2, 0.0])
    bn = resnet.BatchNorm()
    variables = bn.init(jax.random.key(1), c, train=False)
    variables = {**variables, "params": {"scale": scale, "bias": bias}}
    signals, _ = bn.apply(variables, c, train=True, mutable=["batch_stats"])
    e = jax.random.normal(jax.random.key(2), c.shape)
    want = jax.vjp(lambda t: bn.apply(variables, t, train=True, mutable=["batch_stats"])[0]["bn"],
                   c)[1](e)[0]
    got = sweep.norm_error(signals, e, "jacobian")  # reads the BN's gain, not its params
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sweep.norm_error(signals, e, "output"), e)
    affine = conv.bn_affine_deltas(e, signals["xhat"])
    np.testing.assert_allclose(affine["scale"], (e * signals["xhat"]).sum((0, 1, 2)) / 4,
                               rtol=1e-5)


def test_feedback_conv_sends_the_cotangent_through_b():
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    w, b = (jax.random.normal(jax.random.key(i), (3, 3, 3, 4)) for i in (1, 2))
    g = jax.random.normal(jax.random.key(3), (2, 3, 3, 4))
    _, vjp = jax.vjp(lambda x, w: feedback_ops.feedback_conv(x, w, b, 2, 1), x, w)
    dx, dw = vjp(g)
    _, exact = jax.vjp(lambda x, w: conv.conv(x, w, strides=2, padding=1), x, w)
    through_b = jax.vjp(lambda x: conv.conv(x, b, strides=2, padding=1), x)[1](g)[0]
    np.testing.assert_allclose(dx, through_b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, exact(g)[1], rtol=1e-5, atol=1e-5)
    # With B = W the layer is backprop's.
    _, same = jax.vjp(lambda x: feedback_ops.feedback_conv(x, w, w, 2, 1), x)
    np.testing.assert_allclose(same(g)[0], exact(g)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backward", ["fa", "sign"])
def test_autodiff_baselines(backward):
    rule = {"fa": "fa", "sign": "sign_symmetry"}[backward]
    assert rules.RULES[rule].backward == backward
    model, variables, feedback, x, labels = _setup(18, "cifar", None, backward=backward)
    assert bool(feedback) == (backward == "fa")
    deltas = rule_deltas(rule, model, variables["params"], feedback, x, labels,
                         variables["batch_stats"])
    exact = rule_deltas("bp", model.clone(backward="exact"), variables["params"], {}, x,
                        labels, variables["batch_stats"])
    # The head's gradient needs no feedback: identical; the stem's differs from backprop.
    np.testing.assert_allclose(deltas["params"]["head"]["kernel"],
                               exact["params"]["head"]["kernel"], rtol=1e-5, atol=1e-7)
    assert not np.allclose(deltas["params"]["stem"]["conv"]["kernel"],
                           exact["params"]["stem"]["conv"]["kernel"])


def test_bad_options():
    model, variables, _, x, labels = _setup(18, "cifar", Wiring())
    signals = model.apply(variables, x, train=False)
    with pytest.raises(ValueError, match="bn_error"):
        rules.rec_lra(bn_error="none")
    with pytest.raises(ValueError, match="skip source"):
        Wiring(skip_source="random")
    with pytest.raises(ValueError, match="depth 1, 2 or 3"):
        Wiring(depth=4).init(jax.random.key(0), signals, variables["params"])
    with pytest.raises(ValueError, match="'dense' or 'channel'"):
        rules.wiring_of("dfa", skip_source="head").init(jax.random.key(0), signals,
                                                        variables["params"])


def test_depth3_wiring_is_a_graph_variant_only():
    """lra.depth=3 (a wiring added by issue 10): each stage's last block reads the output
    error; the other blocks read the block above through a conv-transpose synapse; inside
    blocks the depth-2 wiring stays. Only wiring.py knows; the sweep and deltas run as is."""
    from rec_lra_jax import wiring  # noqa: PLC0415

    model, variables, _, x, labels = _setup(18, "cifar", Wiring())
    signals = model.apply(variables, x, train=False)
    graph = wiring.build(wiring.Wiring(depth=3), signals, variables["params"], None)
    drive = {b: graph.synapses[b] for b in (f"block_{i:02d}" for i in range(8))}
    stage_ends = {"block_01", "block_03", "block_05"}  # block_07 goes through the head
    for b, synapse in drive.items():
        if b == "block_07":
            assert synapse.kind == "pool" and synapse.source == ("unit", "head")
        elif b in stage_ends:
            assert synapse.kind == "dense" and synapse.source == ("unit", "head")
        else:
            upper = f"block_{int(b[-2:]) + 1:02d}"
            assert synapse.kind == "conv" and synapse.source == ("unit", upper)
            assert graph.units[b].adjacent
    assert graph.synapses["block_02_conv1"].source == ("layer", "block_02_conv2")
    rule = rules.rec_lra(wiring=wiring.Wiring(depth=3))
    feedback = Wiring(depth=3).init(jax.random.key(1), signals, variables["params"])
    deltas = rule_deltas(rule, model, variables["params"], feedback, x, labels,
                         variables["batch_stats"])
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(deltas))
    # Blocks driven from the block above differ from depth 2's, the head's delta does not.
    base = rule_deltas(rules.rec_lra(), model, variables["params"],
                       Wiring().init(jax.random.key(1), signals, variables["params"]),
                       x, labels, variables["batch_stats"])
    np.testing.assert_array_equal(deltas["params"]["head"]["kernel"],
                                  base["params"]["head"]["kernel"])


@pytest.mark.parametrize("depth,stem", [(18, "cifar"), (18, "imagenet"), (50, "cifar")])
def test_kolen_pollack_with_transported_weights_is_backprop(depth, stem):
    """The Kolen-Pollack chain (rule kp) is backprop's structure: given synapses equal to the
    forward weights
    they mirror (an oracle only a test may build), rescaled errors and a tiny beta, every
    layer's delta is the backprop gradient. Training never sees this: its synapses start
    random and learn by Kolen-Pollack (next test)."""
    with jax.enable_x64(True):
        model, variables, graph, oracle, x, labels = mirror_oracle(depth, stem)
        params = variables["params"]
        assert {s.kind for s in graph.synapses.values()} <= {"conv", "pool", "identity"}
        rule = rules.kolen_pollack(beta=1e-7)
        deltas = rule_deltas(rule, model, params, oracle, x, labels, variables["batch_stats"])
        grads = rule_deltas("bp", model, params, {}, x, labels,
                            variables["batch_stats"])
        for (path, delta), grad in zip(jax.tree_util.tree_leaves_with_path(deltas["params"]),
                                       jax.tree.leaves(grads["params"]), strict=True):
            scale = float(jnp.max(jnp.abs(grad)))
            np.testing.assert_allclose(delta, grad, rtol=0, atol=1e-5 * scale,
                                       err_msg=jax.tree_util.keystr(path))


def test_kp_synapses_learn_the_deltas_of_the_layers_they_mirror():
    """The Kolen-Pollack chain (rule kp): each conv synapse's delta is exactly its forward
    layer's kernel delta, the head's pool synapse gets the head's delta transposed, and the
    identity shortcut has no synapse parameters."""
    with jax.enable_x64(True):
        model, variables, graph, _, x, labels = mirror_oracle(18, "cifar")
        params = variables["params"]
        rule = rules.kolen_pollack()
        signals = model.apply(variables, x, train=False)
        feedback = rules.wiring_of("kp").init(jax.random.key(1), signals, params)
        assert "block_00_skip" not in feedback and "block_01_skip" in feedback
        deltas = rule_deltas(rule, model, params, feedback, x, labels,
                             variables["batch_stats"])
        for name, synapse in graph.synapses.items():
            if synapse.kind == "conv":
                np.testing.assert_allclose(deltas["feedback"][name],
                                           deltas["params"][synapse.source[1]]["conv"]["kernel"],
                                           rtol=1e-12, atol=1e-15)
            elif synapse.kind == "pool":
                np.testing.assert_allclose(deltas["feedback"][name],
                                           deltas["params"]["head"]["kernel"].T, rtol=1e-12)


def test_rescale_keeps_errors_from_shrinking_along_the_chain():
    """Without rescale a unit's error is ~beta times its displacement, so on kp's chain
    the stem's error is orders of magnitude below the last block's; with it they are the
    same order."""
    from rec_lra_jax import wiring  # noqa: PLC0415

    model, variables, _, x, labels = _setup(18, "cifar", Wiring())
    signals = model.apply(variables, x, train=False)
    graph = wiring.build(Wiring("transpose"), signals, variables["params"], None)
    feedback = Wiring("transpose").init(jax.random.key(1), signals, variables["params"])
    ratios = {}
    for rescale in (False, True):
        units = sweep.run(graph, signals, labels, feedback, beta=0.1, rescale=rescale).units
        ratios[rescale] = float(jnp.linalg.norm(units["stem"]) /
                                jnp.linalg.norm(units["block_07"]))
    assert ratios[False] < 1e-6 < 1e-2 < ratios[True]


@pytest.mark.parametrize("depth,stem", [(18, "cifar"), (18, "imagenet"), (50, "cifar")])
def test_shortcut_chain_with_transported_weights_is_truncated_backprop(depth, stem):
    """rec-LRA with `chain="shortcut"` and one module (every unit from the head through
    the shortcuts and each block's own layers) computes truncated backprop: given synapses
    equal to the forward weights they mirror, rescaled errors and a tiny beta, every
    layer's delta is the gradient of the model whose residual branches send nothing back
    into their inputs (`ResNet(branch_gradient=False)`), and not backprop's."""
    from rec_lra_jax import wiring as wiring_lib  # noqa: PLC0415

    with jax.enable_x64(True):
        model, variables, _, _, x, labels = mirror_oracle(depth, stem)
        params = variables["params"]
        short = Wiring(module="stage", chain="shortcut", module_stages=4)
        graph = wiring_lib.build(short, model.apply(variables, x, train=False), params, None)
        assert {s.kind for s in graph.synapses.values()} <= {"conv", "pool", "identity"}
        oracle = {name: params[s.source[1]]["conv"]["kernel"] if s.kind == "conv"
                  else params["head"]["kernel"].T
                  for name, s in graph.synapses.items() if s.kind != "identity"}
        rule = rules.rec_lra(wiring=short, beta=1e-7, rescale=True)
        deltas = rule_deltas(rule, model, params, oracle, x, labels, variables["batch_stats"])
        truncated = model.clone(branch_gradient=False)
        for autodiff, equal in ((truncated, True), (model, False)):
            grads = rule_deltas("bp", autodiff, params, {}, x, labels,
                                variables["batch_stats"])
            close = []
            for (path, delta), grad in zip(
                    jax.tree_util.tree_leaves_with_path(deltas["params"]),
                    jax.tree.leaves(grads["params"]), strict=True):
                scale = float(jnp.max(jnp.abs(grad)))
                close.append(bool(np.allclose(delta, grad, rtol=0, atol=1e-5 * scale)))
                if equal:
                    np.testing.assert_allclose(delta, grad, rtol=0, atol=1e-5 * scale,
                                               err_msg=jax.tree_util.keystr(path))
            assert all(close) == equal
