"""Training loop: jitted train and eval steps, checkpoints, metrics and results.json.

`train_and_evaluate(config, workdir)` is the only function here that reads a config; it
builds the model, the rule and the optax chain, then hands them to the pure steps.
"""

import functools
import json
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rec_lra_jax import (
    checkpoints,
    diagnostics,
    input_pipeline,
    models,
    resnet,
    resnet_rules,
    rules,
    transforms,
)


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training, as one pytree of arrays."""

    step: jax.Array
    params: Any
    feedback: Any
    opt_state: Any
    batch_stats: Any = flax.struct.field(default_factory=dict)  # BatchNorm running averages


MODELS = ("mlp", "resnet")
# What autodiff sends back through a ResNet's layers under each rule (resnet.ResNet.backward).
RESNET_BACKWARD = {"fa": "fa", "sign_symmetry": "sign"}


def make_model(config: ml_collections.ConfigDict, num_classes: int, rule: str = "rec_lra"):
    """The model named by config.model ("mlp" or "resnet"), built for `rule`."""
    if config.name == "mlp":
        return models.MLP(
            features=(*config.hidden, num_classes), activation=config.activation,
            residual_gap=config.residual_gap, init_scheme=config.init,
        )
    if config.name == "resnet":
        return resnet.resnet(
            config.depth, num_classes=num_classes, width=config.width, stem=config.stem,
            use_bn=config.use_bn, bn_affine=config.bn_affine, init_scheme=config.init,
            backward=RESNET_BACKWARD.get(rule, "exact"))
    raise ValueError(f"Unknown model {config.name!r}; choose one of {MODELS}.")


def make_rule(rule: str, config: ml_collections.ConfigDict,
              model_name: str = "mlp") -> rules.UpdateRule:
    """The update rule `rule` for a `model_name` model, with the options in config.lra."""
    if model_name == "resnet":
        return _make_resnet_rule(rule, config)
    lra = dict(
        beta=config.beta, gamma=config.gamma, error_unit=config.error_unit,
        alpha_skip=config.alpha_skip, alpha_adjacent=config.alpha_adjacent,
        feedback_rule=config.feedback_rule, feedback_init=config.feedback_init, dx=config.dx,
    )
    factories = {
        "rec_lra": lambda: rules.rec_lra(module_size=config.module_size, depth=config.depth, **lra),
        "lra_e": lambda: rules.lra_e(**lra),
        "bp": rules.backprop,
        "fa": lambda: rules.feedback_alignment(feedback_init=config.baseline_feedback_init),
        "dfa": lambda: rules.direct_feedback_alignment(
            feedback_init=config.baseline_feedback_init),
    }
    if rule not in factories:
        raise ValueError(f"Unknown rule {rule!r} for the MLP; choose one of {sorted(factories)}.")
    return factories[rule]()


def _make_resnet_rule(rule: str, config: ml_collections.ConfigDict) -> rules.UpdateRule:
    if config.feedback_rule not in ("kp", "fixed"):
        raise ValueError(f"lra.feedback_rule={config.feedback_rule!r} is MLP-only; ResNets "
                         f"support 'kp' and 'fixed'.")
    factories = {
        "rec_lra": lambda: resnet_rules.resnet_rec_lra(
            beta=config.beta, gamma=config.gamma if config.feedback_rule == "kp" else 0.0,
            skip_source=config.skip_source, bn_error=config.bn_error,
            feedback_scale=config.feedback_scale, head_last=config.head_last,
            depth=config.depth),
        "bp": lambda: resnet_rules.resnet_autodiff("exact"),
        "fa": lambda: resnet_rules.resnet_autodiff("fa"),
        "sign_symmetry": lambda: resnet_rules.resnet_autodiff("sign"),
        "dfa": lambda: resnet_rules.resnet_dfa(feedback_scale=config.feedback_scale),
    }
    if rule not in factories:
        raise ValueError(f"Unknown rule {rule!r} for ResNets; choose one of "
                         f"{sorted(factories)}.")
    return factories[rule]()


def make_optimizer(
    config: ml_collections.ConfigDict, *, total_steps: int, learn_feedback: bool
) -> optax.GradientTransformation:
    """The optax chain for {"params", "feedback"} deltas, from config.optim.

    Per-tensor re-projection (SPEC), then AdamW or SGD with the schedule; error synapses
    share the chain when they learn and are frozen (set_to_zero) otherwise.
    """
    schedules = {
        "constant": lambda: optax.constant_schedule(config.lr),
        "cosine": lambda: optax.cosine_decay_schedule(config.lr, total_steps, config.final_lr_frac),
    }
    if config.schedule not in schedules:
        raise ValueError(
            f"Unknown schedule {config.schedule!r}; choose one of {sorted(schedules)}.")
    lr = schedules[config.schedule]()
    if config.name == "adamw":
        opt = optax.adamw(lr, weight_decay=config.weight_decay)
    elif config.name == "sgd":
        opt = optax.chain(optax.add_decayed_weights(config.weight_decay),
                          optax.sgd(lr, momentum=config.momentum or None))
    else:
        raise ValueError(f"Unknown optimizer {config.name!r}; choose 'adamw' or 'sgd'.")
    tx = opt
    if config.clip_norm:
        tx = optax.chain(transforms.clip_by_tensor_norm(config.clip_norm), opt)
    if learn_feedback:
        return tx
    return optax.partition({"learn": tx, "freeze": optax.set_to_zero()},
                           {"params": "learn", "feedback": "freeze"})


def train_step(
    state: TrainState, images: jax.Array, labels: jax.Array, *,
    model, rule: rules.UpdateRule, tx: optax.GradientTransformation,
    key: jax.Array, noise_std: float, num_classes: int, sharding=None, augment: str = "none",
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One update: augmentation, input noise, the rule's deltas, the optax chain. Pure."""
    if sharding is not None:
        images = jax.lax.with_sharding_constraint(images, sharding)
        labels = jax.lax.with_sharding_constraint(labels, sharding)
    if augment == "crop_flip":
        images = crop_flip(jax.random.fold_in(jax.random.fold_in(key, 1), state.step), images)
    elif augment != "none":
        raise ValueError(f"Unknown augment {augment!r}; choose 'none' or 'crop_flip'.")
    if noise_std:
        noise_key = jax.random.fold_in(key, state.step)
        images = images + noise_std * jax.random.normal(noise_key, images.shape, images.dtype)
    onehot = jax.nn.one_hot(labels, num_classes)
    deltas, aux = rule.deltas(state.params, state.feedback, images, onehot, model=model,
                              batch_stats=state.batch_stats)
    trainables = {"params": state.params, "feedback": state.feedback}
    updates, opt_state = tx.update(deltas, state.opt_state, trainables)
    trainables = optax.apply_updates(trainables, updates)
    metrics = {
        "loss": rules.cross_entropy(aux["logits"], onehot),
        "accuracy": jnp.mean(jnp.argmax(aux["logits"], -1) == labels),
    }
    new_state = state.replace(step=state.step + 1, opt_state=opt_state,
                              batch_stats=aux.get("batch_stats", state.batch_stats), **trainables)
    return new_state, metrics


def crop_flip(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
    """CIFAR augmentation: zero-pad by `pad`, random crop back to size, random h-flip."""
    batch, height, width, _ = images.shape
    k_y, k_x, k_f = jax.random.split(key, 3)
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ys = jax.random.randint(k_y, (batch,), 0, 2 * pad + 1)
    xs = jax.random.randint(k_x, (batch,), 0, 2 * pad + 1)
    crop = jax.vmap(lambda im, y, x: jax.lax.dynamic_slice(
        im, (y, x, 0), (height, width, im.shape[-1])))(padded, ys, xs)
    flip = jax.random.bernoulli(k_f, 0.5, (batch, 1, 1, 1))
    return jnp.where(flip, crop[:, :, ::-1], crop)


def train_steps(state: TrainState, images: jax.Array, labels: jax.Array, batches: jax.Array,
                **step_kwargs) -> tuple[TrainState, dict[str, jax.Array]]:
    """`train_step` over batches[k] (row indices into images/labels) for k = 0..K-1.

    One jitted call runs K steps with `lax.scan`, so Python dispatch is paid once per call.
    Returns the final state and per-step metrics stacked along axis 0. K = 1 runs the step
    without a loop: XLA:CPU runs convolutions inside a loop body about 10x slower than at
    top level (measured on a ResNet-18 step), so the ResNet configs use steps_per_call=1.
    """

    def body(s, idx):
        return train_step(s, images[idx], labels[idx], **step_kwargs)

    if batches.shape[0] == 1:
        state, metrics = body(state, batches[0])
        return state, jax.tree.map(lambda m: m[None], metrics)
    return jax.lax.scan(body, state, batches)


def model_variables(params, batch_stats) -> dict:
    """The flax variables for inference: params plus BatchNorm running averages if any."""
    return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


def eval_step(params, batch_stats, images, labels, *, model) -> dict[str, jax.Array]:
    """Summed loss and correct count on one batch (BatchNorm uses running averages)."""
    logits = model.apply(model_variables(params, batch_stats), images, train=False)["logits"]
    onehot = jax.nn.one_hot(labels, logits.shape[-1])
    return {
        "loss_sum": jnp.sum(optax.softmax_cross_entropy(logits, onehot)),
        "correct": jnp.sum(jnp.argmax(logits, -1) == labels),
    }


def evaluate(eval_fn, state: TrainState, split: input_pipeline.Split,
             batch_size: int) -> dict[str, float]:
    """Accuracy and mean loss over a whole split."""
    totals = {"loss_sum": 0.0, "correct": 0}
    for start in range(0, len(split.labels), batch_size):
        out = eval_fn(state.params, state.batch_stats, split.images[start:start + batch_size],
                      split.labels[start:start + batch_size])
        totals = {k: totals[k] + v for k, v in jax.device_get(out).items()}
    n = len(split.labels)
    return {"accuracy": float(totals["correct"]) / n, "loss": float(totals["loss_sum"]) / n}


def load_data(config: ml_collections.ConfigDict) -> input_pipeline.Dataset:
    """The dataset named by config.dataset, with config.data's sources."""
    if config.dataset == "synthetic":
        if config.data.dir:
            raise ValueError(f"data.dir={config.data.dir!r} is set but dataset is 'synthetic' "
                             f"(a :smoke config?); set --config.dataset too.")
        shape = config.data.get("synthetic_shape", (28, 28, 1))
        return input_pipeline.synthetic_dataset(seed=config.seed, image_size=shape[0],
                                                channels=shape[-1])
    return input_pipeline.load_dataset(
        config.dataset, data_dir=config.data.dir, source=config.data.source,
        download=config.data.download, tfds_data_dir=config.data.tfds_data_dir or None,
        val_size=config.data.val_size,
    )


def create_train_state(key, model, rule, tx, input_shape) -> TrainState:
    """Fresh parameters, BatchNorm statistics, error synapses and optimizer state."""
    x = jnp.zeros(input_shape)
    variables = model.init(jax.random.fold_in(key, 0), x, train=False)
    params = variables["params"]
    feedback = rule.init(jax.random.fold_in(key, 1), params, model=model, x=x)
    opt_state = tx.init({"params": params, "feedback": feedback})
    return TrainState(jnp.asarray(0, jnp.int32), params, feedback, opt_state,
                      dict(variables.get("batch_stats", {})))


def data_mesh_sharding(batch_size: int) -> NamedSharding | None:
    """Batch sharding over all devices on a 'data' axis, or None with one device.

    State and datasets are replicated over the same mesh (PartitionSpec()).
    """
    n = jax.device_count()
    if n == 1 or batch_size % n:
        return None
    mesh = jax.make_mesh((n,), ("data",), (jax.sharding.AxisType.Auto,))
    return NamedSharding(mesh, P("data"))


def _append_jsonl(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains config.rule on config.dataset, resuming from `workdir`; returns results.json."""
    os.makedirs(workdir, exist_ok=True)
    data = load_data(config)
    num_classes = int(max(data.train.labels.max(), data.test.labels.max())) + 1
    model = make_model(config.model, num_classes, config.rule)
    rule = make_rule(config.rule, config.lra, config.model.name)
    steps_per_epoch = len(data.train.labels) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {len(data.train.labels)} "
                         f"training examples.")
    total_steps = steps_per_epoch * config.num_epochs
    learn_feedback = rules.feedback_is_learned(config.rule, config.lra.feedback_rule)
    tx = make_optimizer(config.optim, total_steps=total_steps, learn_feedback=learn_feedback)
    key = jax.random.key(config.seed)
    state = create_train_state(key, model, rule, tx, (1, *data.train.images.shape[1:]))
    sharding = data_mesh_sharding(config.batch_size)
    replicated = NamedSharding(sharding.mesh, P()) if sharding is not None else jax.devices()[0]
    state = jax.device_put(state, replicated)  # restore places arrays like this template
    mngr = checkpoints.manager(workdir)
    meta = {"best_val_accuracy": 0.0, "train_seconds": 0.0}
    restored = checkpoints.restore_latest(mngr, state)
    if restored is not None:
        state, meta = restored
    start_step = int(state.step)

    step_fn = jax.jit(functools.partial(
        train_steps, model=model, rule=rule, tx=tx, key=jax.random.fold_in(key, 2),
        noise_std=config.input_noise, num_classes=num_classes, sharding=sharding,
        augment=config.get("augment", "none")),
        donate_argnums=0)
    eval_fn = jax.jit(functools.partial(eval_step, model=model))
    cosine_fn = _cosine_fn(model, rule) if config.diagnostics.cosine else None
    train_x, train_y = jax.device_put((data.train.images, data.train.labels), replicated)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    logging.info("Training %s on %s (%s): %d epochs x %d steps, resuming at step %d.",
                 config.rule, config.dataset, data.source, config.num_epochs, steps_per_epoch,
                 start_step)
    if restored is not None:
        _truncate_jsonl(metrics_path, start_step)  # epochs after the checkpoint re-run
    step = start_step
    for epoch in range(start_step // steps_per_epoch, config.num_epochs):
        order = input_pipeline.epoch_permutation(config.seed, epoch, len(train_y))
        batches = order[:steps_per_epoch * config.batch_size].reshape(steps_per_epoch, -1)
        state, step, epoch_metrics = _train_epoch(
            step_fn, state, step, batches, train_x, train_y, epoch * steps_per_epoch,
            total_steps, config, mngr, meta)
        record = _epoch_record(epoch, step, epoch_metrics, meta, eval_fn, state, data, config)
        if cosine_fn is not None:
            batch = slice(0, config.batch_size)
            cos = cosine_fn(state.params, state.feedback, state.batch_stats, train_x[batch],
                            train_y[batch])
            record.update({f"cosine/{k}": float(v) for k, v in cos.items()})
        meta["best_val_accuracy"] = max(meta["best_val_accuracy"], record["val_accuracy"])
        _append_jsonl(metrics_path, record)
        logging.info("epoch %d/%d step %d: %s", epoch + 1, config.num_epochs, step,
                     ", ".join(f"{k}={v:.4g}" for k, v in record.items()
                               if k not in ("epoch", "step")))
    if step > start_step or mngr.latest_step() != step:
        checkpoints.save(mngr, step, state, meta)
    test = evaluate(eval_fn, state, data.test, config.eval_batch_size)
    results = {
        "rule": config.rule, "dataset": config.dataset,
        "model": _model_name(config, data, num_classes),
        "epochs": config.num_epochs, "steps": step, "seed": config.seed,
        "test_accuracy": test["accuracy"], "test_loss": test["loss"],
        "best_val_accuracy": meta["best_val_accuracy"], "train_seconds": meta["train_seconds"],
        "data_source": data.source, "resumed_from_step": start_step,
    }
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    logging.info("Done: %s", results)
    return results


def _train_epoch(step_fn, state, step, batches, train_x, train_y, epoch_start, total_steps,
                 config, mngr, meta):
    """Runs the rest of one epoch in fused calls, checkpointing every N steps.

    Returns the state, the global step and the per-call metrics. Adds the wall time spent
    in train steps (not in checkpointing) to meta["train_seconds"].
    """
    every = config.checkpoint_every_steps
    log_every = config.get("log_every_steps", 0)
    epoch_metrics, t0 = [], time.perf_counter()
    last_log = (step, time.perf_counter())
    while step < epoch_start + len(batches):
        first = step - epoch_start
        # Each call stops at the epoch end and at the next checkpoint step.
        count = min(config.steps_per_call, len(batches) - first, every - step % every)
        state, m = step_fn(state, train_x, train_y, batches[first:first + count])
        epoch_metrics.append(m)
        step += count
        if log_every and step // log_every > last_log[0] // log_every:
            now = time.perf_counter()
            logging.info("step %d/%d: train_loss %.4f, %.2f steps/s", step, total_steps,
                         float(np.mean(jax.device_get(m["loss"]))),
                         (step - last_log[0]) / (now - last_log[1]))
            last_log = (step, now)
        if step % every == 0 and step < total_steps:
            jax.block_until_ready(state)
            meta["train_seconds"] += time.perf_counter() - t0
            checkpoints.save(mngr, step, state, meta)
            t0 = time.perf_counter()
    jax.block_until_ready(state)
    meta["train_seconds"] += time.perf_counter() - t0
    return state, step, epoch_metrics


def _truncate_jsonl(path: str, max_step: int) -> None:
    """Keeps the records of `path` with step <= max_step."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        records = [line for line in f if line.strip() and json.loads(line)["step"] <= max_step]
    with open(path, "w") as f:
        f.writelines(records)


def _epoch_record(epoch, step, epoch_metrics, meta, eval_fn, state, data, config) -> dict:
    train = {k: float(np.mean(np.concatenate(v))) for k, v in jax.device_get(
        jax.tree.map(lambda *xs: list(xs), *epoch_metrics)).items()} if epoch_metrics else {}
    val = evaluate(eval_fn, state, data.val, config.eval_batch_size)
    return {"epoch": epoch + 1, "step": step, "train_loss": train.get("loss", float("nan")),
            "train_accuracy": train.get("accuracy", float("nan")),
            "val_loss": val["loss"], "val_accuracy": val["accuracy"],
            "train_seconds": meta["train_seconds"]}


def _cosine_fn(model, rule):
    """Jitted per-layer cosine between the rule's kernel deltas and the backprop gradient."""
    if isinstance(model, resnet.ResNet):
        bp, bp_model = resnet_rules.resnet_autodiff("exact"), model.clone(backward="exact")
        num_classes = model.num_classes
    else:
        bp, bp_model, num_classes = rules.backprop(), model, model.features[-1]

    @jax.jit
    def fn(params, feedback, batch_stats, images, labels):
        onehot = jax.nn.one_hot(labels, num_classes)
        deltas, _ = rule.deltas(params, feedback, images, onehot, model=model,
                                batch_stats=batch_stats)
        grads, _ = bp.deltas(params, {}, images, onehot, model=bp_model,
                             batch_stats=batch_stats)
        return diagnostics.layer_cosines(deltas["params"], grads["params"])

    return fn


def _model_name(config, data, num_classes) -> str:
    if config.model.name == "resnet":
        m = config.model
        return f"resnet{m.depth}-w{m.width}-{m.stem}" + ("" if m.use_bn else "-nobn")
    widths = (int(np.prod(data.train.images.shape[1:])), *config.model.hidden, num_classes)
    name = "mlp-" + "-".join(str(w) for w in widths)
    return name + (f"-res{config.model.residual_gap}" if config.model.residual_gap else "")


DATASET_SHAPES = {"fashion_mnist": ((28, 28, 1), 10), "mnist": ((28, 28, 1), 10),
                  "synthetic": ((28, 28, 1), 10), "cifar10": ((32, 32, 3), 10)}


def certify_config(config: ml_collections.ConfigDict, *, batch_size: int = 2,
                   input_shape: tuple[int, ...] | None = None, num_classes: int | None = None,
                   rule: rules.UpdateRule | None = None):
    """The weight-transport certificate (`certify.certify_step`) of config's train step.

    Builds the model, rule and optimizer exactly as training does, on zero inputs of the
    config's image shape; no data is read. `rule` replaces config.rule's rule (to certify
    your own rule inside the standard step).
    """
    from rec_lra_jax import certify  # noqa: PLC0415 - only this entry point needs it

    shape, classes = DATASET_SHAPES.get(config.dataset, ((None,), None))
    if input_shape is None:
        size = config.get("data", {}).get("image_size", None)
        input_shape = shape if shape[0] is not None else (size, size, 3)
    num_classes = num_classes or classes or config.get("num_classes", 1000)
    model = make_model(config.model, num_classes, config.rule)
    rule = rule or make_rule(config.rule, config.lra, config.model.name)
    learn = rules.feedback_is_learned(config.rule, config.lra.feedback_rule)
    tx = make_optimizer(config.optim, total_steps=100, learn_feedback=learn)
    state = create_train_state(jax.random.key(0), model, rule, tx, (1, *input_shape))
    step = functools.partial(train_step, model=model, rule=rule, tx=tx,
                             key=jax.random.key(1), noise_std=config.input_noise,
                             num_classes=num_classes)
    images = jnp.zeros((batch_size, *input_shape))
    labels = jnp.zeros((batch_size,), jnp.int32)
    batch_stats = state.batch_stats

    def forward(params, x):
        return model.apply(model_variables(params, batch_stats), x, train=False)

    return certify.certify_step(step, state, images, labels, forward_fn=forward)
