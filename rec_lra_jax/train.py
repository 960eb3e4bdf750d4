"""The training loop: `train_and_evaluate(config, workdir)`, for every dataset and model.

The config goes to `builder` (validation, data, model, rule, optax chain, jitted steps);
this loop only moves batches from a `sources.BatchSource` into fused train calls, checks
every call for non-finite values, evaluates each epoch, keeps the newest and the best
checkpoints, and writes config.json, metrics.jsonl, TensorBoard events and results.json.
Multi-host: each process reads its shard of a streaming source; only process 0 writes.
"""

import math
import os
import time
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rec_lra_jax import builder, checkpoints, metrics, rules, rundir, sources, steps
from rec_lra_jax.config_schema import ConfigError


class NonFiniteError(RuntimeError):
    """The loss, a parameter or an update became NaN or infinite."""


class Interrupted(RuntimeError):
    """The run was stopped by Ctrl-C (KeyboardInterrupt); it resumes from its checkpoint."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, overridden=(),
                       rules_run=None, allow_config_change: bool = False) -> dict:
    """Trains config.rule on config.dataset in `workdir`, resuming from its newest checkpoint.

    Args:
      config: a config from configs/ (see configs/base.py), validated here first.
      workdir: the run's directory (~ expanded). It belongs to one config: a changed config
        is refused unless `allow_config_change` (raising num_epochs needs no flag).
      overridden: keys set on the command line (checked for having no effect).
      rules_run: all rules the caller trains with this config (compare), for validation.

    Returns:
      The results.json record (test accuracy and loss, best validation accuracy and step...).
    """
    builder.validate(config, rules_run=rules_run, overridden=overridden)
    plan = builder.create_plan(config)
    workdir = builder.expand(workdir)
    rundir.check_workdir(workdir)
    primary = jax.process_index() == 0
    has_checkpoint, has_best = (checkpoints.latest_step(os.path.join(workdir, d)) is not None
                                for d in ("checkpoints", "best"))
    record = rundir.read_record(workdir)
    history = (rundir.history_of(checkpoints.read_meta(os.path.join(workdir, "checkpoints")),
                                 record) if has_checkpoint else None)
    best_history = (rundir.history_of(checkpoints.read_meta(os.path.join(workdir, "best")),
                                      record) if has_best and not has_checkpoint else None)
    changes = rundir.check_config(workdir, plan.config, history=history,
                                  has_checkpoint=has_checkpoint, best_history=best_history,
                                  has_best=has_best, allow_change=allow_config_change)
    results = rundir.read_results(workdir)
    if (has_checkpoint and not changes and record is not None and results is not None
            and results.get("epochs") == plan.num_epochs):
        logging.info("%s already holds this finished run; its results: %s", workdir, results)
        return results
    logging.info("Loading %s (data.source=%s) ...", plan.dataset, config.data.source)
    data = builder.create_data(config, shard=(jax.process_index(), jax.process_count()))
    steps_per_epoch = len(data.train) // plan.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size={plan.batch_size} exceeds the {len(data.train)} "
                          f"training examples of {plan.dataset}.")
    total_steps = steps_per_epoch * plan.num_epochs
    try:
        sharding = steps.data_mesh_sharding(plan.batch_size, config.mesh.data,
                                            config.mesh.get("layer", 1))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    # A resume restores the state, so its template skips the start-only weight mirror. (A
    # step directory is one orbax restores or refuses with CheckpointError: never None.)
    setup = builder.create_setup(config, input_shape=data.image_shape,
                                 num_classes=data.num_classes, total_steps=total_steps,
                                 normalization=data.normalization, sharding=sharding,
                                 state_template=has_checkpoint)
    every = max(1, round(plan.checkpoint_every_epochs * steps_per_epoch))
    resolved = {"steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                "checkpoint_every_steps": every, "num_classes": data.num_classes,
                "image_shape": list(data.image_shape), "data_source": data.origin,
                "train_examples": len(data.train), "val_examples": len(data.val),
                "test_examples": len(data.test), "devices": jax.device_count(),
                "processes": jax.process_count(), "jax": jax.__version__,
                "mesh": ({k: int(v) for k, v in sharding.mesh.shape.items()}
                         if sharding is not None else {"data": 1, "layer": 1})}
    run = _Run(plan, data, setup, workdir, every, total_steps, steps_per_epoch, sharding,
               builder.learning_rate(config, total_steps),
               builder.create_cosine_fn(config, setup, data.num_classes, data.normalization)
               if plan.cosine else None,
               changes, history)
    try:
        results = run.train(resolved)
    except KeyboardInterrupt:
        last = checkpoints.latest_step(os.path.join(workdir, "checkpoints"))
        raise Interrupted(
            f"Interrupted at step {run.step}" + (f"; the last checkpoint is step {last} in "
                                                 f"{workdir}" if last is not None else
                                                 "; no checkpoint had been written yet")
            + "; re-run the same command to resume.") from None
    results["model"] = builder.describe_model(config, data.image_shape, data.num_classes)
    # What produced the figure: the wiring and its critical path (docs/algorithm.md,
    # "Target hops"), beside the rule.
    results["wiring"] = builder.describe_wiring(config)
    results["target_hops"] = builder.target_hops(config, input_shape=data.image_shape,
                                                 num_classes=data.num_classes)
    if primary:
        rundir.write_json(os.path.join(workdir, "results.json"), results)
    logging.info("Done: %s", results)
    return results


class _Run:
    """One run's loop state; `train()` runs it to the end."""

    def __init__(self, plan, data, setup, workdir, every, total_steps, steps_per_epoch,
                 sharding, lr_schedule, cosine_fn, config_changes, history):
        self.plan, self.data, self.setup, self.workdir = plan, data, setup, workdir
        self.every, self.total, self.per_epoch = every, total_steps, steps_per_epoch
        self.lr, self.cosine_fn, self.sharding = lr_schedule, cosine_fn, sharding
        self.config_changes = config_changes  # from what trained the workdir, if allowed
        self.history = history  # what trained the newest checkpoint (rundir.history_of)
        self.step = 0  # the last step trained (for an interrupt's message)
        mesh = sharding.mesh if sharding is not None else None
        self.replicated = NamedSharding(mesh, P()) if mesh is not None else jax.devices()[0]
        self.stacked = NamedSharding(mesh, P(None, "data")) if mesh is not None else None
        self.compiled = set()  # fused-call lengths already compiled
        if jax.process_count() > 1 and (sharding is None or plan.eval_batch_size
                                        % jax.device_count()):
            raise ConfigError(f"With {jax.process_count()} processes, batch_size and "
                              f"eval_batch_size must be multiples of the "
                              f"{jax.device_count()} devices.")

    def train(self, resolved: dict) -> dict:
        """Restores, writes config.json, trains to the end, tests; returns the results."""
        plan, data = self.plan, self.data
        ckpt = checkpoints.Checkpoints(self.workdir, keep=plan.keep_checkpoints)
        writer = None
        try:
            state = jax.device_put(self.setup.state, self.replicated if self.sharding is None
                                   else steps.state_shardings(self.setup.state, self.sharding))
            meta = {"best_val_accuracy": 0.0, "best_step": 0, "train_seconds": 0.0}
            try:
                restored = ckpt.restore_latest(state)
            except checkpoints.CheckpointError as e:
                if not self.config_changes:
                    raise
                raise checkpoints.CheckpointError(
                    f"{e} The workdir's config.json differs from this config in: "
                    f"{'; '.join(self.config_changes)}.") from None
            if restored is not None:
                state, meta = restored
                bad = steps.unhealthy_leaves(state)
                if bad:  # written before good meant good (or altered since)
                    listed = ", ".join(f"{checkpoints.tree_name(p)} ({why})"
                                       for p, why in bad[:4])
                    raise checkpoints.CheckpointError(
                        f"The newest checkpoint in {ckpt.latest.directory} (step "
                        f"{ckpt.latest_step()}) holds unusable tensors: {listed}"
                        f"{' ...' if len(bad) > 4 else ''}. Move that step's directory "
                        f"aside to resume from an earlier one, or start in a new workdir.")
            start = self.step = int(state.step)
            history = self._history(restored is not None, start)
            meta["history"] = history  # every checkpoint carries what trained it
            if jax.process_index() == 0:  # only now: a refused restore leaves it as it was
                rundir.write_config(self.workdir, history, resolved)
            writer = metrics.MetricsWriter(self.workdir, start_step=start,
                                           enabled=jax.process_index() == 0)
            logging.info("Training %s on %s (%s): %d epochs x %d steps, resuming at step %d.",
                         plan.rule, plan.dataset, data.origin, plan.num_epochs, self.per_epoch,
                         start)
            logging.info("Compiling the train step (seconds on a CPU, longer for a ResNet); "
                         "progress %s.", f"every {plan.log_every_steps} steps"
                         if plan.log_every_steps else "after each epoch")
            resident = (None if data.train.resident is None
                        else _put_replicated(data.train.resident, self.replicated))
            progress = metrics.Progress(every=plan.log_every_steps, total_steps=self.total,
                                        steps_per_epoch=self.per_epoch, start_step=start)
            step = start
            for epoch in range(start // self.per_epoch, plan.num_epochs):
                state, step = self._epoch(state, step, epoch, resident, meta, ckpt, writer,
                                          progress)
            if step > start or ckpt.latest_step() != step:
                ckpt.save(step, state, meta)
            test = evaluate(self.setup.eval_fn, state, data.test, plan.eval_batch_size,
                            self.sharding)
        finally:
            ckpt.close()
            if writer is not None:
                writer.close()
        # The model on disk: the epochs and steps it was trained for (fewer than num_epochs
        # asks for, or more, when a changed config resumed a run past its end), and the
        # config of the segment that trained it last.
        trained = history[-1]["config"] or {}
        epochs = step / self.per_epoch
        extra = ({"history": rundir.describe_history(history, step)} if len(history) > 1 else {})
        return {"rule": trained.get("rule"), "dataset": trained.get("dataset"),
                "epochs": int(epochs) if epochs == int(epochs) else round(epochs, 3),
                "steps": step, "seed": trained.get("seed"), **extra,
                "test_accuracy": test["accuracy"],
                "test_top5": test["top5"], "test_loss": test["loss"],
                "best_val_accuracy": meta["best_val_accuracy"], "best_step": meta["best_step"],
                "train_seconds": meta["train_seconds"], "data_source": data.origin,
                "resumed_from_step": start}

    def _history(self, resumed: bool, start: int) -> list[dict]:
        """The config history of the model this run leaves: a fresh run's config; a resumed
        one's history, its last config refreshed (free keys, a longer num_epochs) or, if a
        changed config will train it further, a new segment from `start`."""
        config = self.plan.config
        if not resumed:
            return [rundir.segment(0, config)]
        history = list(self.history) if self.history else [rundir.segment(0, None)]
        if not self.config_changes:
            return history[:-1] + [rundir.segment(history[-1]["start_step"], config)]
        if start < self.total:
            history.append(rundir.segment(start, config))
        return history

    def _epoch(self, state, step, epoch, resident, meta, ckpt, writer, progress):
        """Trains the rest of `epoch`, evaluates, records; returns (state, step)."""
        plan, end = self.plan, (epoch + 1) * self.per_epoch
        saved_sums = meta.pop("epoch_sums", None)
        sums = metrics.EpochAverages(saved_sums if step % self.per_epoch else None)
        batches = self.data.train.train_batches(seed=plan.seed, epoch=epoch,
                                                batch_size=plan.batch_size,
                                                start=step - epoch * self.per_epoch)
        clock, pending = metrics.Stopwatch(meta["train_seconds"]), None
        clock.start()
        progress.restart()
        while step < end:
            count = min(plan.steps_per_call, end - step, self.every - step % self.every)
            batch = self._stack(batches, count)
            compiling = count not in self.compiled
            self.compiled.add(count)
            t0 = time.perf_counter()
            state, m = self.setup.train_fn(state, resident, batch)
            if compiling:
                jax.block_until_ready(state)
                progress.compiled(time.perf_counter() - t0)
            else:
                progress.ran(count)
            if pending is not None:
                self._check(pending, state, sums, writer, ckpt)
            pending, step = (step, m), step + count
            self.step = step
            if progress.due(step) or (step % self.every == 0 and step < end):
                self._check(pending, state, sums, writer, ckpt)
                pending = None
                if progress.due(step):
                    progress.report(step, float(np.mean(jax.device_get(m["loss"]))))
            if step % self.every == 0 and step < end:  # mid-epoch checkpoint
                meta["train_seconds"] = clock.stop()
                ckpt.save(step, state, dict(meta, epoch_sums=sums.state))
                clock.start()
        if pending is not None:
            self._check(pending, state, sums, writer, ckpt)
        meta["train_seconds"] = clock.stop()
        record = {"epoch": epoch + 1, "step": step, **sums.averages()}
        val = evaluate(self.setup.eval_fn, state, self.data.val, plan.eval_batch_size,
                       self.sharding)
        record.update({"val_loss": val["loss"], "val_accuracy": val["accuracy"],
                       "val_top5": val["top5"], "lr": float(self.lr(step)),
                       "train_seconds": meta["train_seconds"]})
        if plan.test_curve:  # reported for curves only; selection uses validation
            test = evaluate(self.setup.eval_fn, state, self.data.test, plan.eval_batch_size,
                            self.sharding)
            record.update({"test_loss": test["loss"], "test_accuracy": test["accuracy"]})
        if self.cosine_fn is not None:
            images, labels = next(iter(self.data.val.eval_batches(plan.batch_size)))
            alignment = self.cosine_fn(state.params, state.feedback, state.batch_stats,
                                       images, labels, rules.rule_state(state.opt_state))
            record.update({k: float(v) for k, v in alignment.items()})
        if val["accuracy"] > meta["best_val_accuracy"] or meta["best_step"] == 0:
            meta.update(best_val_accuracy=val["accuracy"], best_step=step)
            ckpt.save(step, state, meta, best=True)
        writer.epoch(record)  # before the checkpoint that covers it (resume trims after it)
        if step % self.every == 0 and step < self.total:
            ckpt.save(step, state, meta)
        logging.info("epoch %d/%d step %d: %s", epoch + 1, plan.num_epochs, step,
                     ", ".join(f"{k}={v:.4g}" for k, v in record.items()
                               if k not in ("epoch", "step")))
        return state, step

    def _stack(self, batches: Iterator, count: int):
        """The next `count` batches, stacked for one fused call (global arrays if multi-host)."""
        items = [next(batches) for _ in range(count)]
        stacked = jax.tree.map(lambda *xs: np.stack(xs), *items)
        if jax.process_count() == 1 or self.data.train.resident is not None:
            return stacked if jax.process_count() == 1 else _put_replicated(
                stacked, self.replicated)
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.stacked, x),
                            stacked)

    def _check(self, pending, state, sums, writer, ckpt):
        """Adds a finished call's metrics; raises NonFiniteError if it went non-finite."""
        first, m = pending
        m = jax.device_get(m)
        sums.add(m["loss"], m["accuracy"])
        skip = self.plan.on_nonfinite == "skip"  # non-finite updates were skipped
        if not m["state_finite"] or not (skip or m["finite"].all()):
            bad = first + (len(m["loss"]) - 1 if m["finite"].all() or skip
                           else int(np.argmin(m["finite"])))
            skips = skip and not m["finite"].all()  # past max_consecutive_skips
            raise NonFiniteError(_nonfinite_message(bad, state, ckpt, self.per_epoch, skip,
                                                    bool(m["state_finite"]) or skips))
        every = self.plan.log_every_steps
        if every:
            for k, loss in enumerate(m["loss"]):
                if (first + k + 1) % every == 0:
                    writer.scalars(first + k + 1, {"train/loss": float(loss),
                                                   "train/accuracy": float(m["accuracy"][k]),
                                                   "lr": float(self.lr(first + k))})


def _nonfinite_message(step: int, state, ckpt, per_epoch: int, skip: bool,
                       state_ok: bool = True) -> str:
    bad = steps.unhealthy_leaves(state)
    leaves = [checkpoints.tree_name(path) + (" (exploding)" if why == "exploding" else "")
              for path, why in bad]
    shown = ", ".join(leaves[:8]) + (f" and {len(leaves) - 8} more" if len(leaves) > 8 else "")
    last = ckpt.latest_step()
    kept = (f"the last good checkpoint, step {last}, is kept in {ckpt.latest.directory} "
            f"(the best so far in {ckpt.best.directory})" if last is not None
            else "no checkpoint had been written yet")
    what = ("the train state became non-finite or exploded" if not state_ok
            else "more consecutive updates than max_consecutive_skips were non-finite" if skip
            else "the loss became non-finite")
    return (f"Training diverged by step {step + 1} (epoch {step // per_epoch + 1}): {what}"
            + (f"; unusable tensors: {shown}" if leaves else "") + f". Nothing unusable "
            f"was saved; {kept}. Lower optim.lr" + ("." if skip else ", or pass "
            "--config.on_nonfinite=skip to skip such steps."))


def _put_replicated(tree, sharding):
    """Host arrays to device arrays replicated over the mesh (global arrays if multi-host)."""
    def put(x):
        x = np.asarray(x)
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
    return jax.tree.map(put, tree)


def evaluate(eval_fn, state, source: sources.BatchSource, batch_size: int,
             sharding=None) -> dict[str, float]:
    """Accuracy, top-5 accuracy and mean loss over a whole split (all processes' shards).

    Every batch is padded to `batch_size` (label -1), so one program serves the split.
    """
    totals = {"loss_sum": 0.0, "correct": 0, "correct_top5": 0, "count": 0}
    use = sharding if sharding is not None and batch_size % sharding.mesh.size == 0 else None
    for images, labels in _equal_batches(source, batch_size):
        pad = batch_size - len(labels)
        if pad:
            images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
            labels = np.concatenate([labels, np.full(pad, -1, labels.dtype)])
        if jax.process_count() > 1:
            images, labels = (jax.make_array_from_process_local_data(use, x)
                              for x in (images, labels))
        out = jax.device_get(eval_fn(state.params, state.batch_stats, images, labels))
        totals = {k: totals[k] + v for k, v in out.items()}
    n = max(int(totals["count"]), 1)
    return {"accuracy": float(totals["correct"]) / n, "top5": float(totals["correct_top5"]) / n,
            "loss": float(totals["loss_sum"]) / n if totals["count"] else math.nan}


def _equal_batches(source: sources.BatchSource, batch_size: int):
    """source.eval_batches, topped up with empty batches so that every process runs the
    same number of eval steps (each one is a collective across processes)."""
    steps = -(-len(source) // (batch_size * jax.process_count()))
    done, template = 0, None
    for batch in source.eval_batches(batch_size):
        template = batch
        done += 1
        yield batch
    if done < steps:
        if template is None:  # this process's shard is empty: an empty batch of the spec
            shape, dtype = source.eval_spec
            template = (np.zeros((0, *shape), dtype), np.zeros((0,), np.int32))
        for _ in range(done, steps):
            yield template[0][:0], template[1][:0]
