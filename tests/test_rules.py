"""Every rule is an optax transform: the contract over jit, chains, schedules and wrappers,
and the model contract a user's own flax module meets (WORKSPACE "How to add a model")."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rec_lra_jax as rl
from rec_lra_jax import steps
from tests.helpers import tiny_mlp

LOCAL = {"rec_lra": rl.rec_lra, "lra_e": rl.lra_e, "dfa": rl.dfa}
AUTODIFF = {"bp": rl.backprop, "fa": rl.feedback_alignment, "sign_symmetry": rl.sign_symmetry}


def _problem(name):
    """(model, rule factory kwargs, trainables, x, labels) for rule `name` on a tiny MLP."""
    model, params, x, y = tiny_mlp()
    model = model.clone(backward=rl.RULES[name].backward)
    variables = model.init(jax.random.key(0), x)
    kwargs = {} if name in AUTODIFF else {"activation": "tanh"}
    if rl.RULES[name].autodiff:
        feedback = variables.get("feedback", {})
    else:
        feedback = rl.wiring_of(name).init(jax.random.key(1), model.apply(variables, x), params,
                                           activation="tanh")
    return model, kwargs, {"params": params, "feedback": feedback}, x, y


def _step(model, tx, autodiff):
    @jax.jit
    def step(trainables, opt_state, x, y):
        incoming, signals, _ = steps.rule_inputs(model, autodiff, trainables["params"],
                                                 trainables["feedback"], {}, x, y)
        updates, opt_state = tx.update(incoming, opt_state, trainables, signals=signals,
                                       labels=y)
        return optax.apply_updates(trainables, updates), opt_state

    return step


def _wrappers(factory, kwargs):
    """The optax compositions every rule must survive."""
    sched = optax.linear_schedule(0.05, 0.2, 10)
    scheduled = ({"beta": sched, "gamma": optax.constant_schedule(0.5)}
                 if "activation" in kwargs and factory is not rl.dfa else {})
    rule = factory(**kwargs)
    adam = optax.adam(1e-2)
    return {
        "chain": optax.chain(rule, rl.clip_by_tensor_norm(1.0), adam),
        "named_chain": optax.named_chain(("rule", rule), ("adam", adam)),
        "partition": optax.chain(rule, optax.partition(
            {"w": optax.adam(1e-2), "e": optax.sgd(1e-2)},
            {"params": "w", "feedback": "e"})),
        "inject_hyperparams": optax.chain(
            optax.inject_hyperparams(factory)(**kwargs, **scheduled), adam),
        "multi_steps": optax.chain(rule, optax.MultiSteps(adam, every_k_schedule=2)),
        "apply_if_finite": optax.chain(rule, optax.apply_if_finite(adam, 3)),
        "contrib.mechanize": optax.chain(rule, optax.contrib.mechanize(adam)),
        "contrib.schedule_free": optax.chain(rule, optax.contrib.schedule_free(
            optax.sgd(1e-2), 1e-2)),
    }


@pytest.mark.parametrize("name", [*LOCAL, *AUTODIFF])
def test_rules_compose_as_optax_transforms(name):
    model, kwargs, trainables, x, y = _problem(name)
    factory = {**LOCAL, **AUTODIFF}[name]
    assert isinstance(factory(**kwargs), optax.GradientTransformationExtraArgs)
    for how, tx in _wrappers(factory, kwargs).items():
        step = _step(model, tx, name in AUTODIFF)
        state, opt_state = trainables, tx.init(trainables)
        for _ in range(3):
            state, opt_state = step(state, opt_state, x, y)
        assert step._cache_size() == 1, (name, how)  # second and third calls reuse it
        leaves = jax.tree.leaves(state)
        assert all(bool(jnp.all(jnp.isfinite(v))) for v in leaves), (name, how)
        moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), state["params"],
                             trainables["params"])
        assert max(jax.tree.leaves(moved)) > 0, (name, how)


def test_scheduled_beta_changes_the_deltas_without_recompiling():
    model, kwargs, trainables, x, y = _problem("rec_lra")
    tx = optax.inject_hyperparams(rl.rec_lra)(beta=lambda count: 0.05 * (count + 1),
                                              activation="tanh")
    state = tx.init(trainables)

    @jax.jit
    def deltas(state):
        signals = model.apply({"params": trainables["params"]}, x)
        return tx.update(trainables, state, trainables, signals=signals, labels=y)

    first, state = deltas(state)
    second, state = deltas(state)
    assert deltas._cache_size() == 1
    assert float(state.hyperparams["beta"]) == pytest.approx(0.1)
    direct = rl.rule_deltas(model, rl.rec_lra(beta=0.1, activation="tanh"),
                            trainables["params"], trainables["feedback"], {}, x, y)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 second, direct)
    assert not np.allclose(first["params"]["layer_00"]["kernel"],
                           second["params"]["layer_00"]["kernel"])


# ---- The model contract, followed literally (WORKSPACE.md, "How to add a model") ----


class GeluNet(nn.Module):
    """A user's model: a gelu MLP whose middle layer has no bias, other widths."""

    @nn.compact
    def __call__(self, x, *, train=False):
        del train
        z = x.reshape(x.shape[0], -1)
        inputs, pre, post = [], [], []
        for i, (width, bias) in enumerate(((24, True), (12, False), (5, True))):
            inputs.append(z)
            h = nn.Dense(width, use_bias=bias, name=f"dense_{i}")(z)
            z = jax.nn.gelu(h) if i < 2 else jax.nn.softmax(h)
            pre.append(h)
            post.append(z)
        return {"inputs": tuple(inputs), "pre": tuple(pre), "post": tuple(post), "logits": h}


@pytest.mark.parametrize("name", ["rec_lra", "lra_e", "dfa"])
def test_a_users_model_trains_with_every_local_rule(name):
    factory = LOCAL[name]
    model = GeluNet()
    x = jax.random.normal(jax.random.key(0), (32, 7))
    y = jax.nn.one_hot(jnp.argmax(x[:, :5], -1), 5)  # a learnable labelling
    params = model.init(jax.random.key(1), x)["params"]
    rule = factory(activation=jax.nn.gelu)
    feedback = rl.wiring_of(name).init(jax.random.key(2), model.apply({"params": params}, x),
                                       params, activation=jax.nn.gelu)
    tx = optax.chain(rule, optax.adam(3e-2))
    trainables = {"params": params, "feedback": feedback}
    opt_state = tx.init(trainables)
    deltas = rl.rule_deltas(model, rule, params, feedback, {}, x, y)
    assert "bias" not in deltas["params"]["dense_1"]  # no bias, no bias delta

    @jax.jit
    def step(trainables, opt_state):
        signals = model.apply({"params": trainables["params"]}, x)
        updates, opt_state = tx.update(trainables, opt_state, trainables, signals=signals,
                                       labels=y)
        return optax.apply_updates(trainables, updates), opt_state, signals["logits"]

    losses = []
    for _ in range(60):
        trainables, opt_state, logits = step(trainables, opt_state)
        losses.append(float(rl.rules.cross_entropy(logits, y)))
    assert losses[-1] < 0.6 * losses[0], losses[::10]


def test_unsupported_models_fail_when_the_rule_is_built():
    class NoSignals(nn.Module):
        @nn.compact
        def __call__(self, x, *, train=False):
            return {"logits": nn.Dense(3)(x)}

    model = NoSignals()
    x = jnp.ones((2, 4))
    params = model.init(jax.random.key(0), x)["params"]
    with pytest.raises(ValueError, match="Model contract"):
        rl.Wiring().init(jax.random.key(0), model.apply({"params": params}, x), params,
                         activation="tanh")
    with pytest.raises(ValueError, match="activation="):
        GeluParams = GeluNet()
        p = GeluParams.init(jax.random.key(0), jnp.ones((2, 7)))["params"]
        rl.Wiring().init(jax.random.key(0), GeluParams.apply({"params": p}, jnp.ones((2, 7))),
                         p)


@pytest.mark.parametrize("kind", rl.rules.SCHEDULES)
def test_schedule_goes_from_start_to_final_and_holds(kind):
    fn = rl.rules.schedule(kind, 0.2, 0.05, 10)
    if kind == "constant":
        assert fn == 0.2
        return
    values = [float(fn(k)) for k in (0, 5, 10, 20)]
    assert values[0] == pytest.approx(0.2) and values[2:] == pytest.approx([0.05, 0.05])
    assert values[1] == pytest.approx(0.125)  # halfway for both shapes
    frac = {"linear": 0.2, "cosine": 0.5 * (1 - np.cos(0.2 * np.pi))}[kind]  # at step 2
    assert float(fn(2)) == pytest.approx(0.2 - 0.15 * frac)
    with pytest.raises(ValueError, match="Unknown schedule 'step'"):
        rl.rules.schedule("step", 0.2, 0.05, 10)


def test_inject_hyperparams_steps_beta_and_gamma_of_a_plain_rule():
    """optax.inject_hyperparams over a rule, no library wrapper: beta and gamma live in the
    state (the train step's form: a factory of beta and gamma, the other options fixed)."""
    model, kwargs, trainables, x, y = _problem("rec_lra")
    beta, gamma = rl.rules.schedule("linear", 0.2, 0.05, 3), rl.rules.schedule("cosine", 1.0,
                                                                               0.25, 3)
    rule = optax.inject_hyperparams(
        lambda beta, gamma: rl.rec_lra(beta=beta, gamma=gamma, activation="tanh"))(
        beta=beta, gamma=gamma)
    assert type(rule) is optax.GradientTransformationExtraArgs
    state = rule.init(trainables)
    assert set(state.hyperparams) == {"beta", "gamma"}
    signals = model.apply({"params": trainables["params"]}, x)
    update = jax.jit(lambda s: rule.update(trainables, s, trainables, signals=signals,
                                           labels=y))
    for k in range(5):  # update k uses the schedules at k, held after the horizon
        got, state = update(state)
        want = rl.rule_deltas(model, rl.rec_lra(beta=float(beta(k)), gamma=float(gamma(k)),
                                                activation="tanh"),
                              trainables["params"], trainables["feedback"], {}, x, y)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                     got, want)
        if k == 0:
            first = got
    assert float(state.hyperparams["beta"]) == pytest.approx(0.05)
    assert not np.allclose(first["params"]["layer_00"]["kernel"],
                           got["params"]["layer_00"]["kernel"])


@pytest.mark.parametrize("name", [*LOCAL, "kp"])
def test_multi_steps_after_a_rule_equals_one_step_on_the_union(name):
    """chain(rule, MultiSteps(sgd, k)) over k equal micro-batches = chain(rule, sgd) on their
    union: on an MLP each delta is a mean of per-example terms, so the accumulated mean of
    the micro-batches' deltas is the union's delta."""
    model, kwargs, trainables, x, y = _problem(name if name != "kp" else "rec_lra")
    factory = {**LOCAL, "kp": rl.kolen_pollack}[name]
    if name == "kp":
        trainables = dict(trainables, feedback=rl.wiring_of("kp").init(
            jax.random.key(1), model.apply({"params": trainables["params"]}, x),
            trainables["params"], activation="tanh"))
    rule = factory(**kwargs)
    tx = optax.chain(rule, optax.MultiSteps(optax.sgd(0.1), 2))
    step = _step(model, tx, False)
    state, opt_state = trainables, tx.init(trainables)
    for half in (slice(0, 3), slice(3, 6)):
        state, opt_state = step(state, opt_state, x[half], y[half])
    plain = optax.chain(rule, optax.sgd(0.1))
    want, _ = _step(model, plain, False)(trainables, plain.init(trainables), x, y)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 state, want)
    moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
        jax.tree.leaves(state), jax.tree.leaves(trainables), strict=True))
    assert moved > 1e-4


@pytest.mark.parametrize("name", [*LOCAL, *AUTODIFF])
def test_apply_if_finite_after_a_rule_skips_a_nan_batch(name):
    model, kwargs, trainables, x, y = _problem(name)
    tx = optax.chain({**LOCAL, **AUTODIFF}[name](**kwargs),
                     optax.apply_if_finite(optax.sgd(0.1), 3))
    step = _step(model, tx, name in AUTODIFF)
    opt_state = tx.init(trainables)
    bad = x.at[0, 0].set(jnp.nan)
    after, opt_state = step(trainables, opt_state, bad, y)
    jax.tree.map(np.testing.assert_array_equal, after, trainables)  # unchanged
    assert int(opt_state[1].notfinite_count) == 1
    after, _ = step(after, opt_state, x, y)  # a good batch still trains
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(after))
    assert any(not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(after["params"]), jax.tree.leaves(trainables["params"]), strict=True))


@pytest.mark.parametrize("name", ["rec_lra", "kp", "lra_e", "dfa"])
def test_wrappers_around_a_local_rule_are_refused_with_where_it_goes(name):
    """Around the rule, MultiSteps would train on the last micro-batch only, masked /
    partition hide parameters the sweep reads and apply_if_finite would judge the
    trainables instead of the deltas: refused when traced, naming the fix."""
    model, kwargs, trainables, x, y = _problem("rec_lra" if name == "kp" else name)
    rule = {**LOCAL, "kp": rl.kolen_pollack}[name](**kwargs)
    adam = optax.adam(1e-2)
    for tx in (optax.MultiSteps(optax.chain(rule, adam), 2),
               optax.masked(rule, {"params": True, "feedback": False}),
               optax.chain(optax.clip_by_global_norm(1.0), rule),
               optax.apply_if_finite(optax.chain(rule, adam), 3)):
        with pytest.raises(ValueError, match=r"optax.chain\(rule, optax.MultiSteps"):
            _step(model, tx, False)(trainables, tx.init(trainables), x, y)


def test_the_rules_state_is_found_by_name_wherever_it_sits():
    """rules.rule_state finds the scheduled rule's state by its hyperparameter "beta" (the
    loop's diagnostics evaluate beta at the training step with it), in a chain, in a
    named chain, and refuses two rules in one state."""
    rule = optax.inject_hyperparams(rl.rec_lra)(beta=optax.linear_schedule(0.1, 0.01, 4),
                                                 activation="tanh")
    params = {"w": jnp.zeros(3)}
    for tx in (optax.chain(rule, optax.sgd(0.1)),
               optax.named_chain(("rule", rule), ("sgd", optax.sgd(0.1)))):
        state = tx.init(params)
        found = rl.rules.rule_state(state)
        assert found is (state[0] if isinstance(state, tuple) else state["rule"])
        assert float(found.hyperparams["beta"]) == pytest.approx(0.1)
    assert rl.rules.rule_state(optax.chain(optax.sgd(0.1)).init(params)) is None
    with pytest.raises(ValueError, match="one rule per chain"):
        rl.rules.rule_state(optax.chain(rule, rule).init(params))


@pytest.mark.parametrize("name", [*LOCAL, "kp"])
def test_a_per_layer_hybrid_with_partition_after_the_rule(name):
    """rec-LRA (or any local rule) here, frozen there: `chain(rule, partition(...))` trains
    the labelled layers exactly as the plain chain does and leaves the frozen ones as
    they were."""
    model, kwargs, trainables, x, y = _problem(name if name != "kp" else "rec_lra")
    factory = {**LOCAL, "kp": rl.kolen_pollack}[name]
    if name == "kp":
        trainables = dict(trainables, feedback=rl.wiring_of("kp").init(
            jax.random.key(1), model.apply({"params": trainables["params"]}, x),
            trainables["params"], activation="tanh"))
    frozen = sorted(trainables["params"])[0]  # the first layer
    labels = jax.tree_util.tree_map_with_path(
        lambda path, _: "frozen" if path[0].key == "params" and path[1].key == frozen
        else "learn", trainables)
    hybrid = optax.chain(factory(**kwargs), optax.partition(
        {"learn": optax.sgd(0.1), "frozen": optax.set_to_zero()}, labels))
    plain = optax.chain(factory(**kwargs), optax.sgd(0.1))
    got, _ = _step(model, hybrid, False)(trainables, hybrid.init(trainables), x, y)
    want, _ = _step(model, plain, False)(trainables, plain.init(trainables), x, y)
    for layer in trainables["params"]:
        expected = trainables if layer == frozen else want
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                     got["params"][layer], expected["params"][layer])
    assert not np.allclose(got["params"][sorted(trainables["params"])[-1]]["kernel"],
                           trainables["params"][sorted(trainables["params"])[-1]]["kernel"])
