"""The config's keys as data: valid values, and which model, rule or data source reads each.

`check(flat, ...)` returns every problem of a flattened config as one line each; the
builder raises them together as a `ConfigError` before anything is compiled. Three kinds:
- out of range: "optim.lr=-1.0 is out of range: must be a finite number > 0";
- a key of the other model family: "lra.module_size has no effect on ResNets";
- a key the chosen rule, source or option does not read, when set on the command line:
  "lra.beta=0.5 has no effect: it is read only by rules rec_lra, lra_e (rule is 'bp')".
  (A config file may carry options for every rule it can run; only overrides are checked.)
"""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

from rec_lra_jax import local, models, sweep, wiring
from rec_lra_jax.rules import RULES, SCHEDULES
from rec_lra_jax.sources import DATASETS, SOURCES


class ConfigError(ValueError):
    """A config with keys that do nothing or values out of range."""


class Check(NamedTuple):
    ok: Callable[[Any], bool]
    text: str  # what a valid value is


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def integer(lo: int, hi: int | None = None) -> Check:
    text = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
    return Check(lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v
                 and (hi is None or v <= hi), text)


def number(lo: float, *, strict: bool = False, hi: float | None = None,
           strict_hi: bool = False) -> Check:
    low = f"> {lo}" if strict else f">= {lo}"
    high = "" if hi is None else f" and {'<' if strict_hi else '<='} {hi}"
    return Check(lambda v: _number(v) and (v > lo if strict else v >= lo) and (
        hi is None or (v < hi if strict_hi else v <= hi)), f"a finite number {low}{high}")


def choice(*options) -> Check:
    return Check(lambda v: v in options, f"one of {', '.join(map(repr, options))}")


BOOL = Check(lambda v: isinstance(v, bool), "True or False")
TEXT = Check(lambda v: isinstance(v, str), "a string")
WIDTHS = Check(lambda v: isinstance(v, tuple | list) and len(v) > 0 and all(
    isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in v),
    "a non-empty tuple of integers >= 1")

SHARES = Check(lambda v: isinstance(v, tuple | list) and all(
    _number(a) and -1 <= a <= 1 for a in v), "a tuple of numbers in [-1, 1] (may be empty)")

RULE_NAMES = tuple(RULES)  # the one registry: rules.RULES
FAMILY_RULES = {"mlp": RULE_NAMES, "resnet": RULE_NAMES}
FAMILY_NAMES = {"mlp": "MLPs", "resnet": "ResNets"}
STREAMING = tuple(name for name, info in DATASETS.items() if info.streaming)


class View(NamedTuple):
    """What decides whether a key is read."""

    family: str
    rules: tuple[str, ...]
    source: str
    dataset: str
    flat: dict


def rules(*names: str):
    def reads(view: View) -> str | None:
        if set(view.rules) & set(names):
            return None
        rule = view.rules[0] if len(view.rules) == 1 else view.rules
        return f"it is read only by rules {', '.join(names)} (rule is {rule!r})"
    return reads


def sources(*names: str):
    def reads(view: View) -> str | None:
        if view.source == "auto" or view.source in names:
            return None
        return f"it is read only by data sources {', '.join(names)} (source is {view.source!r})"
    return reads


def when(key: str, *values):
    def reads(view: View) -> str | None:
        if view.flat.get(key) in values:
            return None
        return f"it is read only when {key} is {' or '.join(map(repr, values))}"
    return reads


def all_of(*conditions):
    """Read only when every condition holds: the first that fails says why."""
    def reads(view: View) -> str | None:
        return next((why for c in conditions if (why := c(view)) is not None), None)
    return reads


def streaming(flag: bool):
    def reads(view: View) -> str | None:
        if (view.dataset in STREAMING) == flag:
            return None
        kind = "streaming datasets (imagenet2012)" if flag else "in-memory datasets"
        return f"it is read only for {kind} (dataset is {view.dataset!r})"
    return reads


class Key(NamedTuple):
    check: Check
    reads: Callable[[View], str | None] | None = None


LOCAL = ("rec_lra", "lra_e", "kp")
SKIP_RULES = ("rec_lra", "lra_e")  # kp's synapses always learn by Kolen-Pollack and rescale
# Each allowed value has one home, the module that implements it.
INITS = models.KERNEL_INITS
FEEDBACK_INITS = local.FEEDBACK_INITS
ACTIVATIONS = tuple(models.ACTIVATIONS)
COMMON = {
    "dataset": Key(choice(*DATASETS)),
    "rule": Key(TEXT),
    "seed": Key(integer(0, 2**31 - 1)),
    "data.source": Key(choice(*SOURCES)),
    "data.dir": Key(TEXT, sources("idx", "cifar", "folder")),
    "data.download": Key(BOOL, sources("tfds")),
    "data.tfds_data_dir": Key(TEXT, sources("tfds")),
    "data.val_size": Key(integer(0)),
    "data.threads": Key(integer(0, 1024), sources("folder", "tfds", "synthetic")),
    "data.processes": Key(integer(0, 256), streaming(True)),
    "data.cache_dir": Key(TEXT, sources("folder")),
    "data.image_size": Key(integer(0, 4096), streaming(True)),
    "data.synthetic_size": Key(integer(1), sources("synthetic")),
    "lra.beta": Key(number(0, strict=True), rules(*LOCAL)),
    "lra.gamma": Key(number(0), rules(*LOCAL)),
    "lra.beta_schedule": Key(choice(*SCHEDULES), rules(*LOCAL)),
    "lra.beta_final": Key(number(0, strict=True),
                          all_of(rules(*LOCAL), when("lra.beta_schedule", "linear", "cosine"))),
    "lra.gamma_schedule": Key(choice(*SCHEDULES), rules(*LOCAL)),
    "lra.gamma_final": Key(number(0), all_of(rules(*LOCAL),
                                             when("lra.gamma_schedule", "linear", "cosine"))),
    "lra.feedback_rule": Key(choice(*local.FEEDBACK_RULES), rules(*SKIP_RULES)),
    "lra.error_unit": Key(choice(*sweep.ERROR_UNITS), rules(*LOCAL)),
    "lra.alpha_skip": Key(number(0, hi=1), rules(*LOCAL)),
    "lra.alpha_adjacent": Key(number(0, hi=1), rules(*LOCAL)),
    "lra.output_error_unit": Key(choice("same", *sweep.ERROR_UNITS), rules(*LOCAL)),
    "lra.feedback_init": Key(choice(*FEEDBACK_INITS), rules(*LOCAL)),
    "lra.feedback_scale": Key(number(0, strict=True), rules(*LOCAL, "dfa")),
    "lra.dx": Key(BOOL, rules(*LOCAL)),
    "lra.grouped": Key(BOOL, rules(*LOCAL, "dfa")),
    "lra.rescale": Key(BOOL, rules(*SKIP_RULES)),
    "optim.name": Key(choice("adamw", "sgd")),
    "optim.lr": Key(number(0, strict=True)),
    "optim.weight_decay": Key(number(0)),
    "optim.momentum": Key(number(0, hi=1, strict_hi=True), when("optim.name", "sgd")),
    "optim.schedule": Key(choice("constant", "cosine")),
    "optim.final_lr_frac": Key(number(0, hi=1), when("optim.schedule", "cosine")),
    "optim.clip_norm": Key(number(0)),
    "optim.share_moments": Key(BOOL, all_of(rules(*LOCAL), when("optim.name", "adamw"))),
    "optim.readout_lr_scale": Key(number(0, strict=True), all_of(
        rules("rec_lra"), when("lra.local_loss", "only", "mixed"))),
    "batch_size": Key(integer(1)),
    "eval_batch_size": Key(integer(1)),
    "num_epochs": Key(integer(1)),
    "input_noise": Key(number(0)),
    "augment": Key(choice("none", "crop_flip"), streaming(False)),
    "steps_per_call": Key(integer(1)),
    "dtype": Key(choice("float32", "bfloat16")),
    "mesh.data": Key(integer(0)),
    "mesh.layer": Key(integer(1)),
    "log_every_steps": Key(integer(0)),
    "checkpoint_every_epochs": Key(number(0, strict=True)),
    "keep_checkpoints": Key(integer(1)),
    "on_nonfinite": Key(choice("stop", "skip")),
    "max_consecutive_skips": Key(integer(1), when("on_nonfinite", "skip")),
    "diagnostics.cosine": Key(BOOL),
    "diagnostics.test_curve": Key(BOOL),
}
MLP = {
    "model.name": Key(choice("mlp")),
    "model.hidden": Key(WIDTHS),
    "model.activation": Key(choice(*ACTIVATIONS)),
    "model.residual_gap": Key(integer(0)),
    "model.init": Key(choice(*INITS)),
    "lra.depth": Key(integer(1), rules("rec_lra")),
    "lra.module_size": Key(integer(1), rules("rec_lra")),
    "lra.baseline_feedback_init": Key(choice(*FEEDBACK_INITS), rules("fa", "dfa")),
}
RESNET = {
    "model.name": Key(choice("resnet")),
    "model.depth": Key(choice(18, 34, 50)),
    "model.width": Key(integer(1)),
    "model.stem": Key(choice("cifar", "imagenet")),
    "model.use_bn": Key(BOOL),
    "model.bn_affine": Key(BOOL),
    "model.init": Key(choice(*INITS)),
    "model.init_scale": Key(number(0, strict=True)),
    "model.branch_gradient": Key(BOOL, rules("bp", "fa", "sign_symmetry")),
    "lra.depth": Key(choice(1, 2, 3), rules("rec_lra")),
    "lra.skip_source": Key(choice(*wiring.SKIP_SOURCES), rules("rec_lra")),
    "lra.bn_error": Key(choice(*sweep.NORM_ERRORS), rules(*LOCAL, "dfa")),
    "lra.head_last": Key(BOOL, rules("rec_lra")),
    "lra.weight_mirror": Key(number(0), rules("rec_lra", "kp")),
    "lra.module": Key(choice(*wiring.MODULES), rules("rec_lra")),
    "lra.stem_module": Key(BOOL, all_of(rules("rec_lra"), when("lra.module", "stage"))),
    "lra.chain": Key(choice(*wiring.CHAINS), all_of(rules("rec_lra"),
                                                    when("lra.module", "stage"))),
    "lra.module_stages": Key(integer(1), all_of(rules("rec_lra"), when("lra.module", "stage"))),
    "lra.inner_loss": Key(BOOL, all_of(rules("rec_lra"), when("lra.module", "stage"),
                                       when("lra.local_loss", "only", "mixed"))),
    "lra.local_loss": Key(choice(*wiring.LOCAL_LOSSES), rules("rec_lra")),
    "lra.local_loss_grid": Key(integer(1), rules("rec_lra")),
    "lra.local_loss_hidden": Key(integer(0), rules("rec_lra")),
    "lra.local_loss_conv": Key(integer(0), rules("rec_lra")),
    "lra.local_loss_recon": Key(number(0), rules("rec_lra")),
    "lra.local_loss_sim": Key(number(0), rules("rec_lra")),
    "lra.local_loss_distill": Key(number(-1, hi=1), rules("rec_lra")),
    "lra.local_loss_distill_each": Key(SHARES, rules("rec_lra")),
    "lra.skip_learning": Key(choice(*wiring.SKIP_LEARNING), rules("rec_lra")),
    "lra.skip_activity": Key(BOOL, all_of(rules("rec_lra"), when("lra.skip_learning",
                                                                  "regress"))),
    "lra.probe_sigma": Key(number(0, strict=True), all_of(
        rules("rec_lra"), when("lra.skip_learning", "perturb"))),
    "lra.baseline_feedback_init": Key(choice(*FEEDBACK_INITS), rules("dfa")),
}
FAMILIES = {"mlp": MLP, "resnet": RESNET}
# Values that became something else, with where they went.
MOVED = {("lra.skip_source", "mirror"): (
    "lra.skip_source='mirror' is the Kolen-Pollack baseline now, rule 'kp' (backprop's "
    "path through learned transposes; rec_lra drives errors from at most lra.depth hops "
    "above): use --config.rule=kp and leave lra.skip_source at 'dense'."),
    **{(key, "lra_e"): f"{key}='lra_e': {local.RENAMED_INIT}" for key in (
        "lra.feedback_init", "lra.baseline_feedback_init")}}
# Why a local-rule option of one family has no meaning in the other.
FAMILY_ONLY = {
    "lra.module_size": "a ResNet's modules are its blocks and stages, chosen by lra.depth",
    "lra.skip_source": "an MLP's skips follow lra.module_size and lra.depth",
    "lra.head_last": "an MLP has no pooled head",
    "lra.bn_error": "an MLP has no BatchNorm",
    "lra.weight_mirror": "an MLP's error synapses mirror no single layer",
    "lra.module": "an MLP's modules are lra.module_size layers",
    "lra.stem_module": "an MLP has no stem",
    "lra.chain": "an MLP has no shortcuts",
    "lra.module_stages": "an MLP has no stages",
    "lra.inner_loss": "an MLP's units read the output error",
    "lra.local_loss": "an MLP's units read the output error (block-local losses: ResNets)",
    "lra.local_loss_grid": "an MLP has no feature maps to pool",
    "lra.local_loss_hidden": "an MLP's units read the output error",
    "lra.local_loss_conv": "an MLP has no feature maps",
    "lra.local_loss_recon": "an MLP's units read the output error",
    "lra.local_loss_sim": "an MLP's units read the output error",
    "lra.local_loss_distill": "an MLP's units read the output error",
    "lra.local_loss_distill_each": "an MLP's units read the output error",
    "lra.skip_learning": "an MLP's skip synapses learn by lra.feedback_rule",
    "lra.skip_activity": "an MLP's skips are plain matrices",
    "lra.probe_sigma": "an MLP's skips learn by lra.feedback_rule",
}


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; tuples and lists are leaves."""
    out = {}
    for name, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


def set_key(config, key: str, value) -> None:
    """config["a.b.c"] = value for a nested ConfigDict (unlocked) or dict; a list given for
    a tuple-valued key becomes a tuple. Raises ConfigError naming the key when the config
    has no such key."""
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
        node = node.get(p) if hasattr(node, "get") else None
    if node is None or not hasattr(node, "get") or leaf not in node:
        raise ConfigError(f"{key} is not a key of this config (configs/base.py lists them; "
                          f"family-only keys: rec_lra_jax/config_schema.py).")
    if isinstance(node[leaf], tuple) and isinstance(value, list):
        value = tuple(value)
    node[leaf] = value


def _view(flat: dict[str, Any], rules_run: tuple[str, ...]) -> View:
    return View(flat.get("model.name"), rules_run, flat.get("data.source"),
                flat.get("dataset"), flat)


def check(flat: dict[str, Any], *, rules_run: tuple[str, ...] | None = None,
          overridden=()) -> list[str]:
    """Every problem of the flattened config `flat`, one line each (empty: valid)."""
    family = flat.get("model.name")
    if family not in FAMILIES:
        return [f"model.name={family!r} is unknown: must be one of 'mlp', 'resnet'."]
    schema = {**COMMON, **FAMILIES[family]}
    other = {k for f, keys in FAMILIES.items() if f != family for k in keys} - set(schema)
    problems = []
    for key in flat:
        if key in other:
            reason = FAMILY_ONLY.get(key)
            problems.append(f"{key} has no effect on {FAMILY_NAMES[family]}"
                            f"{' (' + reason + ')' if reason else ''}; remove it (or use a "
                            f"config of that family: configs/base.py).")
        elif key not in schema:
            problems.append(f"{key} is not a config key (configs/base.py lists them all).")
    problems += [f"config lacks {k} (configs/base.py has its default)." for k in schema
                 if k not in flat]
    rules_run = tuple(rules_run or (flat.get("rule"),))
    for rule in rules_run:
        if rule not in FAMILY_RULES[family]:
            problems.append(f"rule={rule!r} is unknown for {FAMILY_NAMES[family]}: must be one "
                            f"of {', '.join(FAMILY_RULES[family])}.")
    view = _view(flat, rules_run)
    for key, spec in schema.items():
        if key not in flat:
            continue
        value = flat[key]
        if (key, value) in MOVED:
            problems.append(MOVED[key, value])
        elif not spec.check.ok(value):
            problems.append(f"{key}={value!r} is out of range: must be {spec.check.text}.")
        elif key in overridden and spec.reads is not None:
            reason = spec.reads(view)
            if reason:
                problems.append(f"{key}={value!r} has no effect: {reason}.")
    return problems + _combinations(flat, family, overridden)


def unread(flat: dict[str, Any]) -> dict[str, str]:
    """The schema's keys that the config `flat`'s own rule, source and options do not read
    (present in `flat` or not), each with why; empty without a model family and rule.

    rundir ignores them when it compares a workdir's saved config with a new one: a
    backprop run is the same run whatever its config says about rec-LRA's beta.
    """
    if flat.get("model.name") not in FAMILIES or "rule" not in flat:
        return {}
    schema = {**COMMON, **FAMILIES[flat["model.name"]]}
    view = _view(flat, (flat["rule"],))
    reasons = {key: spec.reads(view) for key, spec in schema.items() if spec.reads is not None}
    return {key: reason for key, reason in reasons.items() if reason}


def _combinations(flat: dict, family: str, overridden=()) -> list[str]:
    """Values that are each valid but do not work together."""
    problems = []
    if family == "resnet":
        skip = flat.get("lra.skip_source")
        if skip == "head" and flat.get("lra.head_last") is False:
            problems.append("lra.skip_source='head' needs lra.head_last=True: the head "
                            "chain drives each block from the block above, and the last "
                            "block has none but the head.")
        if flat.get("lra.module") == "stage" and (skip not in ("dense", "channel")
                                                  or flat.get("lra.depth") != 2):
            problems.append(f"lra.module='stage' drives stage outputs from the output error "
                            f"and chains the units inside each stage: it needs "
                            f"lra.skip_source 'dense' or 'channel' (got {skip!r}) and "
                            f"lra.depth=2 (got {flat.get('lra.depth')!r}).")
        if flat.get("lra.skip_learning") == "regress" and (
                skip not in ("dense", "channel") or flat.get("lra.local_loss") == "only"):
            problems.append("lra.skip_learning='regress' trains skip synapses from the output "
                            "error: it needs lra.skip_source 'dense' or 'channel' and "
                            "lra.local_loss other than 'only'.")
        if flat.get("lra.local_loss_recon", 0) and flat.get("lra.local_loss",
                                                             "none") == "none":
            problems.append("lra.local_loss_recon weights a term beside a block-local loss: "
                            "set lra.local_loss to 'only' or 'mixed', or the weight to 0.")
        if flat.get("lra.local_loss_conv", 0) and (
                flat.get("lra.local_loss", "none") == "none"
                or flat.get("lra.local_loss_hidden", 0)):
            problems.append("lra.local_loss_conv puts a conv layer in each readout: it needs "
                            "lra.local_loss 'only' or 'mixed' and lra.local_loss_hidden=0.")
        sim = flat.get("lra.local_loss_sim", 0)
        if sim and flat.get("lra.local_loss", "none") == "none":
            problems.append("lra.local_loss_sim weights a term beside a block-local loss: "
                            "set lra.local_loss to 'only' or 'mixed', or the weight to 0.")
        if isinstance(sim, int | float) and sim >= 1:
            problems.append(f"lra.local_loss_sim is predsim's beta, (1 - beta) pred + beta "
                            f"sim: it must be below 1 (got {sim!r}; Nokland & Eidnes use "
                            f"0.99).")
        distill = flat.get("lra.local_loss_distill", 0) or tuple(
            flat.get("lra.local_loss_distill_each", ()) or ())
        # a config's default share is dropped with its readouts (a user who turns the local
        # loss off gets the wiring without them); set on the command line, it is an error
        if distill and flat.get("lra.local_loss", "none") == "none" and {
                "lra.local_loss_distill", "lra.local_loss_distill_each"} & set(overridden):
            problems.append("lra.local_loss_distill(_each) mixes the output into the "
                            "block-local losses' targets: set lra.local_loss to 'only' or "
                            "'mixed', or it to 0 (or ()).")
        if flat.get("lra.local_loss", "none") != "none" and flat.get(
                "lra.feedback_rule") == "fixed":
            problems.append("lra.local_loss needs learned synapses (its readouts learn with "
                            "them): set lra.feedback_rule='kp' or lra.local_loss='none'.")
    if flat.get("optim.share_moments") and flat.get("rule") in LOCAL and (
            flat.get("lra.gamma") != 1.0 or flat.get("lra.gamma_schedule") != "constant"
            or (flat.get("rule") != "kp" and flat.get("lra.feedback_rule") != "kp")):
        problems.append("optim.share_moments reuses a kernel's Adam moments for the synapse "
                        "whose deltas equal its own: that needs lra.gamma=1.0 with "
                        "lra.gamma_schedule='constant' and lra.feedback_rule='kp'.")
    if flat.get("optim.share_moments") and flat.get("rule") in LOCAL and flat.get("lra.dx"):
        problems.append("optim.share_moments needs a synapse's delta to equal its kernel's: "
                        "lra.dx=True multiplies phi' into the kernels' deltas only; turn one "
                        "off.")
    if flat.get("dataset") in STREAMING and flat.get("data.source") in ("idx", "cifar"):
        problems.append(f"data.source={flat['data.source']!r} cannot hold {flat['dataset']}; "
                        f"use 'auto', 'tfds', 'folder' or 'synthetic'.")
    return problems
