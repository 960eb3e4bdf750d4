"""ResNet structure: standard parameter counts, shapes, exposed signals, BatchNorm modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rec_lra_jax import resnet

# torchvision's resnet18 / resnet34 / resnet50 (ImageNet, 1000 classes), trainable scalars.
STANDARD_COUNTS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032}


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_standard_parameter_counts(depth):
    model = resnet.resnet(depth, num_classes=1000)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                                               train=False))
    assert resnet.param_count(shapes["params"]) == STANDARD_COUNTS[depth]
    convs = [k for k in shapes["params"] if k != "head"]
    assert sorted(convs) == sorted(resnet.conv_layer_names(model))


def test_resnet18_has_18_weight_layers_plus_projections():
    names = resnet.conv_layer_names(resnet.resnet(18, num_classes=10))
    assert len([n for n in names if not n.endswith("_proj")]) + 1 == 18  # + the dense head


def _tiny(depth=18, stem="cifar", **kwargs):
    model = resnet.resnet(depth, num_classes=10, width=4, stem=stem, **kwargs)
    x = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))
    variables = model.init(jax.random.key(1), x, train=False)
    return model, variables, x


def _train_apply(model, variables, x):
    return model.apply(variables, x, train=True, mutable=["batch_stats"])


@pytest.mark.parametrize("depth,stem", [(18, "cifar"), (18, "imagenet"), (50, "cifar")])
def test_forward_exposes_local_signals(depth, stem):
    model, variables, x = _tiny(depth, stem)
    out, _ = _train_apply(model, variables, x)
    assert out["logits"].shape == (3, 10)
    stem_out = out["stem"]
    if stem == "imagenet":
        assert stem_out["post"].shape == (3, 16, 16, 4) and stem_out["pooled"].shape == (3, 8, 8, 4)
    else:
        assert stem_out["post"].shape == (3, 32, 32, 4)
    block = out["blocks"]["block_00"]
    np.testing.assert_allclose(block["post"], jax.nn.relu(block["pre"]))
    last = "conv3" if depth == 50 else "conv2"
    np.testing.assert_allclose(block["pre"], block[last]["bn"] + block["shortcut"], rtol=1e-6)
    first_strided = out["blocks"]["block_02" if depth == 18 else "block_03"]
    assert "proj" in first_strided  # the shape changes: 1x1 strided conv + BN shortcut
    # In training mode BN normalises with batch statistics: x_hat has zero mean, unit var.
    xhat = block["conv1"]["xhat"]
    np.testing.assert_allclose(jnp.mean(xhat, axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.var(xhat, axis=(0, 1, 2)), 1.0, atol=1e-2)
    np.testing.assert_allclose(out["head"]["input"], jnp.mean(
        out["blocks"][max(out["blocks"])]["post"], axis=(1, 2)), rtol=1e-6)


def test_batchnorm_running_statistics_drive_eval():
    model, variables, x = _tiny()
    out, updates = _train_apply(model, variables, x)
    stats = updates["batch_stats"]["stem"]["bn"]
    conv = out["stem"]["conv"]
    np.testing.assert_allclose(stats["mean"], 0.1 * jnp.mean(conv, axis=(0, 1, 2)), rtol=1e-5,
                               atol=1e-7)
    new_vars = {**variables, "batch_stats": updates["batch_stats"]}
    eval_out = model.apply(new_vars, x, train=False)
    mean, var = stats["mean"], stats["var"]
    np.testing.assert_allclose(eval_out["stem"]["xhat"],
                               (conv - mean) / jnp.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backward", ["exact", "fa"])
def test_init_scale_shrinks_conv_kernels_only_and_leaves_the_forward(backward):
    model, variables, x = _tiny(backward=backward)
    small_model, small, _ = _tiny(backward=backward, init_scale=0.1)
    for name, layer in variables["params"].items():
        if name == "head":
            np.testing.assert_array_equal(small["params"]["head"]["kernel"], layer["kernel"])
        else:
            np.testing.assert_allclose(small["params"][name]["conv"]["kernel"],
                                       0.1 * layer["conv"]["kernel"], rtol=1e-6)
    if backward == "fa":  # FA's fixed feedback kernels keep their scale
        jax.tree.map(np.testing.assert_array_equal, small["feedback"], variables["feedback"])
    # In training mode BatchNorm normalizes each conv, so the logits barely move.
    big_out, _ = _train_apply(model, variables, x)
    small_out, _ = _train_apply(small_model, small, x)
    np.testing.assert_allclose(small_out["logits"], big_out["logits"], rtol=1e-2, atol=1e-3)


def test_bn_ablations_and_bad_inputs():
    x = jnp.zeros((3, 32, 32, 3))

    def init_shapes(**kwargs):
        model = resnet.resnet(18, num_classes=10, width=4, stem="cifar", **kwargs)
        return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))

    no_affine = init_shapes(bn_affine=False)
    assert "batch_stats" in no_affine and "bn" not in no_affine["params"]["stem"]
    no_bn = init_shapes(use_bn=False)
    assert "batch_stats" not in no_bn and "bn" not in no_bn["params"]["stem"]
    with pytest.raises(ValueError, match="expects images"):
        resnet.resnet(18, num_classes=10).init(jax.random.key(0), x.reshape(3, -1))
    with pytest.raises(ValueError, match="depth"):
        resnet.resnet(20, num_classes=10).init(jax.random.key(0), x, train=False)
