"""The config schema: every key's checks, keys of the other family named, every problem at
once, keys a rule does not read change nothing, keys added since a run was saved."""

import jax
import numpy as np
import pytest

from configs import fmnist_resnet18
from rec_lra_jax import builder, config_schema, input_pipeline, rundir
from rec_lra_jax.config_schema import ConfigError
from tests.helpers import smoke_config


def test_schema_names_keys_of_the_other_family():
    config = smoke_config(fmnist_resnet18)
    with config.unlocked():
        config.lra.module_size = 3
        config.model.hidden = (32,)
    with pytest.raises(ConfigError) as info:
        builder.validate(config)
    assert "lra.module_size has no effect on ResNets" in str(info.value)
    assert "model.hidden has no effect on ResNets" in str(info.value)


def test_schema_lists_every_problem_at_once():
    flat = config_schema.flatten(smoke_config(**{"optim.lr": -1.0, "batch_size": 0}).to_dict())
    problems = config_schema.check(flat, overridden={"optim.lr"})
    assert any(p.startswith("optim.lr=-1.0 is out of range") for p in problems)
    assert any(p.startswith("batch_size=0 is out of range") for p in problems)
    # A rule option a compared rule reads is valid, with bp among the rules.
    flat = config_schema.flatten(smoke_config(rule="bp", **{"lra.beta": 0.5}).to_dict())
    assert config_schema.check(flat, rules_run=("rec_lra", "bp"), overridden={"lra.beta"}) == []
    assert config_schema.check(flat, overridden={"lra.beta"})


def test_base_config_covers_the_schema():
    from configs import base

    for family, keys in config_schema.FAMILIES.items():
        flat = config_schema.flatten(base.get_config(family).to_dict())
        assert set(flat) == set(config_schema.COMMON) | set(keys), family
        assert config_schema.check(flat) == []


def test_a_key_added_since_a_run_matches_at_its_old_behaviour():
    saved = {"model": {"name": "resnet", "init": "he"}, "lra": {"beta": 0.1}}
    now = {"model": {"name": "resnet", "init": "he", "init_scale": 1.0}, "lra": {"beta": 0.1}}
    assert rundir.config_changes(saved, now) == []
    now["model"]["init_scale"] = 0.1
    assert rundir.config_changes(saved, now) == ["model.init_scale: 1.0 -> 0.1"]
    now = {"model": {"name": "resnet", "init": "he"}, "lra": {"beta": 0.1, "weight_mirror": 0.0}}
    assert rundir.config_changes(saved, now) == []
    now["lra"]["weight_mirror"] = 100.0
    assert rundir.config_changes(saved, now) == ["lra.weight_mirror: 0.0 -> 100.0"]


# Another valid value for each key that some rule or option does not read.
_OTHER = {
    "lra.chain": ("full", "shortcut"), "lra.module_stages": (1, 2),
    "lra.beta": (0.3, 0.2), "lra.beta_schedule": ("linear", "constant"),
    "lra.beta_final": (0.02, 0.01), "lra.gamma_schedule": ("cosine", "constant"),
    "lra.gamma_final": (0.2, 0.1), "lra.gamma": (0.5, 2.0), "lra.feedback_rule": ("fixed", "kp"),
    "lra.error_unit": ("cauchy", "l2"), "lra.alpha_skip": (0.5, 0.25),
    "lra.alpha_adjacent": (0.5, 0.25), "lra.output_error_unit": ("same", "l2"),
    "lra.feedback_init": ("lecun", "he"), "lra.feedback_scale": (0.5, 2.0),
    "lra.depth": (1, 3), "lra.module_size": (3, 2), "lra.baseline_feedback_init": ("lecun", "he"),
    "lra.skip_source": ("channel", "dense"), "lra.bn_error": ("output", "jacobian"),
    "lra.weight_mirror": (5.0, 0.0), "optim.momentum": (0.5, 0.8),
    "lra.module": ("stage", "block"), "lra.local_loss": ("mixed", "none"),
    "lra.local_loss_grid": (2, 1), "lra.local_loss_hidden": (8, 0),
    "lra.skip_learning": ("regress", "kp"), "lra.local_loss_recon": (0.5, 0.0),
    "lra.local_loss_sim": (0.5, 0.0), "lra.local_loss_conv": (8, 0),
    "lra.grouped": (True, False), "optim.readout_lr_scale": (2.0, 1.0),
    "lra.local_loss_distill": (0.5, 0.0),
    "lra.local_loss_distill_each": ((0.5,), ()),
    "optim.final_lr_frac": (0.5, 0.1), "lra.probe_sigma": (0.1, 0.05),
}


@pytest.mark.parametrize("family,rule", [
    ("mlp", r) for r in ("lra_e", "bp", "fa", "dfa", "sign_symmetry")] + [
    ("resnet", r) for r in ("bp", "dfa")])
def test_keys_a_rule_does_not_read_change_nothing(family, rule):
    # rundir reuses a finished run whose saved config differs only in keys its rule does
    # not read (config_schema.unread): the schema's claim must hold, bit for bit.
    module = fmnist_resnet18 if family == "resnet" else None
    base = smoke_config(module, rule=rule)
    flat = config_schema.flatten(base.to_dict())
    keys = sorted(k for k in config_schema.unread(flat) if k.split(".")[0] in ("lra", "optim"))
    assert keys, "nothing to check"
    changed = {}
    for key in keys:
        value = flat[key]
        assert key in _OTHER or isinstance(value, bool), f"add {key} to _OTHER"
        changed[key] = (not value) if isinstance(value, bool) else next(
            v for v in _OTHER[key] if v != value)
    other = smoke_config(module, rule=rule, **changed)
    assert set(config_schema.unread(config_schema.flatten(other.to_dict()))) >= set(keys)
    batches = jax.numpy.arange(2 * 32).reshape(2, 32)
    raw = input_pipeline.synthetic_arrays((28, 28, 1), 10, seed=0)["train"]
    data = (jax.numpy.asarray(raw[0]), jax.numpy.asarray(raw[1]))
    states = []
    for config in (base, other):
        setup = builder.create_setup(config, input_shape=(28, 28, 1), num_classes=10,
                                     total_steps=10, donate=False)
        states.append(setup.train_fn(setup.state, data, batches)[0])
    jax.tree.map(np.testing.assert_array_equal, *states)
    # ... so a finished run is reused under either config.
    assert rundir.config_changes(base.to_dict(), other.to_dict()) == []
