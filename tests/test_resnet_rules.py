"""rec-LRA on ResNets (work in progress): delta and synapse structure for every variant."""

import jax
import jax.numpy as jnp
import pytest

from rec_lra_jax import resnet, resnet_rules


def _setup(depth, stem, skip_source, size=16, batch=2, **model_kwargs):
    model = resnet.resnet(depth, num_classes=10, width=4, stem=stem, **model_kwargs)
    x = jnp.zeros((batch, size, size, 3))
    labels = jax.nn.one_hot(jnp.arange(batch) % 10, 10)
    variables = model.init(jax.random.key(0), x, train=False)
    rule = resnet_rules.resnet_rec_lra(skip_source=skip_source)
    feedback = rule.init(jax.random.key(1), variables["params"], model=model, x=x)
    return model, variables, rule, feedback, x, labels


@pytest.mark.parametrize("depth,stem,skip_source", [
    (18, "cifar", "head"), (18, "imagenet", "head"), (18, "cifar", "channel"),
    (18, "cifar", "dense"), (50, "cifar", "head"), (50, "imagenet", "channel"),
])
def test_deltas_match_params_and_feedback(depth, stem, skip_source):
    model, variables, rule, feedback, x, labels = _setup(depth, stem, skip_source,
                                                         size=32 if stem == "imagenet" else 16)
    deltas, aux = jax.eval_shape(lambda: rule.deltas(
        variables["params"], feedback, x, labels, model=model,
        batch_stats=variables["batch_stats"]))
    shapes = lambda t: jax.tree.map(lambda a: a.shape, t)
    assert shapes(deltas["params"]) == shapes(variables["params"])
    assert shapes(deltas["feedback"]) == shapes(feedback)
    assert shapes(aux["batch_stats"]) == shapes(variables["batch_stats"])


def test_bn_options_and_errors():
    model, variables, _, feedback, x, labels = _setup(18, "cifar", "head")
    acts, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    out = jax.eval_shape(lambda: resnet_rules.resnet_deltas(
        variables["params"], feedback, acts, labels, model=model, bn_error="scaled"))
    assert set(out["params"]["stem"]) == {"conv", "bn"}
    with pytest.raises(ValueError, match="bn_error"):
        resnet_rules.resnet_deltas(variables["params"], feedback, acts, labels, model=model,
                                   bn_error="none")
    with pytest.raises(ValueError, match="skip source"):
        resnet_rules.init_resnet_feedback(jax.random.key(0), model, variables["params"], x,
                                          skip_source="random")
