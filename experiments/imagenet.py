r"""ImageNet (ILSVRC-2012) with a streaming input pipeline; top-1 and top-5.

  python -m experiments.imagenet --config=configs/resnet18.py --workdir=/tmp/imagenet \
      --config.data.tfds_data_dir=~/tensorflow_datasets

Needs imagenet2012 prepared as array_record (see `rec_lra_jax/imagenet_input.py` and
README "ImageNet"). `:smoke` configs run on tfds mock data, no dataset needed.
Resumes from the newest checkpoint in --workdir (mid-epoch included).
"""

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging
from ml_collections import config_flags

from rec_lra_jax import checkpoints, imagenet_input, rules, train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.json.")
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/resnet18.py[:smoke].",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def eval_step(params, batch_stats, images, labels, *, model):
    """Summed loss, top-1 and top-5 correct counts on one batch."""
    logits = model.apply(train.model_variables(params, batch_stats), images,
                         train=False)["logits"]
    top5 = jax.lax.top_k(logits, 5)[1]
    onehot = jax.nn.one_hot(labels, logits.shape[-1])
    return {"loss_sum": jnp.sum(optax.softmax_cross_entropy(logits, onehot)),
            "top1": jnp.sum(top5[:, 0] == labels),
            "top5": jnp.sum(jnp.any(top5 == labels[:, None], axis=-1))}


def evaluate(eval_fn, state, source, config) -> dict[str, float]:
    totals, n = {"loss_sum": 0.0, "top1": 0, "top5": 0}, 0
    for images, labels in imagenet_input.batches(
            source, batch_size=config.eval_batch_size, size=config.data.image_size,
            train=False, seed=0, epoch=0, limit=config.data.limit or None,
            workers=config.data.workers):
        out = jax.device_get(eval_fn(state.params, state.batch_stats, images, labels))
        totals = {k: totals[k] + v for k, v in out.items()}
        n += len(labels)
    return {"top1": float(totals["top1"]) / n, "top5": float(totals["top5"]) / n,
            "loss": float(totals["loss_sum"]) / n}


def train_and_evaluate(config, workdir: str) -> dict:
    os.makedirs(workdir, exist_ok=True)
    data_dir = config.data.tfds_data_dir or None
    train_src = imagenet_input.open_split("train", data_dir=data_dir, name=config.dataset)
    val_src = imagenet_input.open_split("validation", data_dir=data_dir, name=config.dataset)
    num_train = min(len(train_src), config.data.limit or len(train_src))
    steps_per_epoch = num_train // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {num_train} examples.")
    total_steps = steps_per_epoch * config.num_epochs
    model = train.make_model(config.model, config.num_classes, config.rule)
    rule = train.make_rule(config.rule, config.lra, config.model.name)
    learn = rules.feedback_is_learned(config.rule, config.lra.feedback_rule)
    tx = train.make_optimizer(config.optim, total_steps=total_steps, learn_feedback=learn)
    key = jax.random.key(config.seed)
    size = config.data.image_size
    state = train.create_train_state(key, model, rule, tx, (1, size, size, 3))
    mngr = checkpoints.manager(workdir)
    meta = {"train_seconds": 0.0}
    restored = checkpoints.restore_latest(mngr, state)
    if restored is not None:
        state, meta = restored
    start = int(state.step)
    sharding = train.data_mesh_sharding(config.batch_size)
    step_fn = jax.jit(functools.partial(
        train.train_step, model=model, rule=rule, tx=tx, key=jax.random.fold_in(key, 2),
        noise_std=config.input_noise, num_classes=config.num_classes, sharding=sharding),
        donate_argnums=0)
    eval_fn = jax.jit(functools.partial(eval_step, model=model))
    logging.info("Training %s on %s: %d epochs x %d steps (batch %d), resuming at step %d.",
                 config.rule, config.dataset, config.num_epochs, steps_per_epoch,
                 config.batch_size, start)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    step = start
    for epoch in range(start // steps_per_epoch, config.num_epochs):
        t0, losses, since = time.perf_counter(), [], 0
        for images, labels in imagenet_input.batches(
                train_src, batch_size=config.batch_size, size=size, train=True,
                seed=config.seed, epoch=epoch, skip=step - epoch * steps_per_epoch,
                limit=config.data.limit or None, workers=config.data.workers):
            state, metrics = step_fn(state, images, labels)
            losses.append(metrics["loss"])
            step, since = step + 1, since + 1
            if step % config.log_every_steps == 0:
                logging.info("step %d/%d: loss %.4f, %.2f steps/s", step, total_steps,
                             float(np.mean(jax.device_get(losses[-config.log_every_steps:]))),
                             since / (time.perf_counter() - t0))
            if step % config.checkpoint_every_steps == 0 and step < total_steps:
                meta["train_seconds"] += time.perf_counter() - t0
                checkpoints.save(mngr, step, state, meta)
                t0, since = time.perf_counter(), 0
        jax.block_until_ready(state)
        meta["train_seconds"] += time.perf_counter() - t0
        val = evaluate(eval_fn, state, val_src, config)
        record = {"epoch": epoch + 1, "step": step,
                  "train_loss": float(np.mean(jax.device_get(losses))) if losses else None,
                  "val_top1": val["top1"], "val_top5": val["top5"], "val_loss": val["loss"],
                  "train_seconds": meta["train_seconds"]}
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        logging.info("epoch %d/%d: %s", epoch + 1, config.num_epochs, record)
    if step > start or mngr.latest_step() != step:
        checkpoints.save(mngr, step, state, meta)
    val = evaluate(eval_fn, state, val_src, config)
    results = {"rule": config.rule, "dataset": config.dataset,
               "model": f"resnet{config.model.depth}-w{config.model.width}",
               "epochs": config.num_epochs, "steps": step, "seed": config.seed,
               "val_top1": val["top1"], "val_top5": val["top5"], "val_loss": val["loss"],
               "train_seconds": meta["train_seconds"], "resumed_from_step": start}
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    logging.info("Done: %s", results)
    return results


def main(argv):
    logging.get_absl_handler().addFilter(lambda r: "orbax" not in r.pathname)
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = FLAGS.config
    logging.info("Config:\n%s", config)
    if config.data.mock_examples:  # smoke runs: tfds's mock data, no dataset needed
        import tensorflow_datasets as tfds  # noqa: PLC0415

        with tfds.testing.mock_data(num_examples=config.data.mock_examples):
            train_and_evaluate(config, FLAGS.workdir)
    else:
        train_and_evaluate(config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
