"""Pure, jittable steps: the train step (one or K fused), the eval step, the train state.

Nothing here reads a config; `builder.py` closes the model, rule and optax chain over these
functions and the loop (`train.py`) calls the jitted results.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rec_lra_jax import preprocessing, rules


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training, as one pytree of arrays."""

    step: jax.Array
    params: Any
    feedback: Any
    opt_state: Any
    batch_stats: Any = flax.struct.field(default_factory=dict)  # BatchNorm running averages


def normalize(images: jax.Array, normalization: str = "unit") -> jax.Array:
    """Model inputs from stored pixels: uint8 / 255 ("unit"), then the ImageNet channel
    mean and std ("imagenet"). Float images are taken as already in [0, 1]."""
    if images.dtype == jnp.uint8:
        images = images.astype(jnp.float32) / 255.0
    if normalization == "imagenet":
        mean = jnp.asarray(preprocessing.IMAGENET_MEAN, images.dtype)
        std = jnp.asarray(preprocessing.IMAGENET_STD, images.dtype)
        images = (images - mean) / std
    elif normalization != "unit":
        raise ValueError(f"Unknown normalization {normalization!r}; choose 'unit' or 'imagenet'.")
    return images


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


def all_finite(tree) -> jax.Array:
    """Whether every element of every leaf is finite (one boolean)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


# A state whose parameters, synapses or BatchNorm statistics reach this magnitude is
# exploding even while finite (float32 overflows near 3e38): never saved, never called good.
HEALTHY_LIMIT = 1e8


def healthy(state) -> jax.Array:
    """Whether a train state is good to keep (one boolean): everything it holds is finite
    (params, synapses, BatchNorm statistics, optimizer state) and its params, synapses and
    statistics are below HEALTHY_LIMIT in magnitude (NaN and inf fail that bound too)."""
    sized = [jnp.all(jnp.abs(x) < HEALTHY_LIMIT)
             for x in jax.tree.leaves((state.params, state.feedback, state.batch_stats))
             if jnp.issubdtype(x.dtype, jnp.inexact)]
    return all_finite(state.opt_state) & (jnp.all(jnp.stack(sized)) if sized
                                          else jnp.array(True))


def unhealthy_leaves(state) -> list[tuple[Any, str]]:
    """(path, "non-finite" | "exploding") of every leaf `healthy` rejects (host-side)."""
    out = []
    tree = {"params": state.params, "feedback": state.feedback,
            "batch_stats": state.batch_stats, "opt_state": state.opt_state}
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        x = np.asarray(jax.device_get(x))
        if not np.issubdtype(x.dtype, np.inexact):
            continue
        if not np.isfinite(x).all():
            out.append((path, "non-finite"))
        elif path[0].key != "opt_state" and np.abs(x).max(initial=0) >= HEALTHY_LIMIT:
            out.append((path, "exploding"))
    return out


def forward(model, params, feedback, batch_stats, images, *, autodiff: bool = False):
    """The one forward pass of a train step: (signals, new BatchNorm statistics).

    A model built for an autodiff baseline also reads its fixed feedback kernels (the
    "feedback" collection); local rules' error synapses are not model variables.
    """
    variables = model_variables(params, batch_stats)
    if autodiff and feedback:
        variables["feedback"] = feedback
    signals, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
    return signals, updates.get("batch_stats", batch_stats)


def probe(model, params, batch_stats, images, signals, names, sigma: float,
          key: jax.Array) -> dict:
    """{unit: (xi, delta)} for each probed block output (`Wiring.skip_learning="perturb"`):
    a second forward pass, in training mode, with that output moved by sigma * xi
    (xi ~ N(0, 1)); delta = (logits' - logits) / sigma. Forward use of the weights only;
    the probe's BatchNorm statistics are dropped."""
    out = {}
    for i, name in enumerate(names):
        shape = signals["blocks"][name]["post"].shape
        xi = jax.random.normal(jax.random.fold_in(key, i), shape, signals["logits"].dtype)
        moved, _ = model.apply(model_variables(params, batch_stats), images, train=True,
                               perturb={name: sigma * xi}, mutable=["batch_stats"])
        out[name] = (xi, (moved["logits"] - signals["logits"]) / sigma)
    return out


def float32(tree):
    """Every floating leaf below float32 (bfloat16 activations) cast up to float32."""
    def up(x):
        if jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32:
            return x.astype(jnp.float32)
        return x
    return jax.tree.map(up, tree)


def rule_inputs(model, autodiff: bool, params, feedback, batch_stats, images, onehot, *,
                probes: tuple[str, ...] = (), probe_sigma: float = 0.05, key=None):
    """(incoming updates, signals, new batch statistics) for the rule's `update`.

    Autodiff rules (`rules.RULES[name].autodiff`) get the gradient of the cross-entropy
    through the model (built with their `backward`); local rules compute their own deltas
    and ignore the incoming updates. `probes`: block outputs probed by a perturbed second
    forward pass (`probe`), passed to the rule as signals["perturbed"].
    """
    if autodiff:
        def loss_fn(p):
            signals, stats = forward(model, p, feedback, batch_stats, images, autodiff=True)
            return rules.cross_entropy(signals["logits"], onehot), (signals, stats)

        grads, (signals, stats) = jax.grad(loss_fn, has_aux=True)(params)
        return {"params": grads, "feedback": feedback}, signals, stats
    signals, stats = forward(model, params, feedback, batch_stats, images)
    signals = float32(signals)  # a bfloat16 forward's signals: the sweep and deltas in float32
    if probes:
        signals = {**signals, "perturbed": probe(model, params, batch_stats, images, signals,
                                                 probes, probe_sigma, key)}
    return {"params": params, "feedback": feedback}, signals, stats


def rule_deltas(model, rule: rules.Rule, params, feedback, batch_stats, images, onehot,
                rule_state=None, *, autodiff: bool = False, probes: tuple[str, ...] = (),
                probe_sigma: float = 0.05, key=None):
    """The rule's deltas on one batch, before any optimizer: {"params", "feedback"}.

    `rule_state`: the rule's optax state in training (the first entry of the train
    state's opt_state), which holds a scheduled beta's step; None: a fresh state.
    `autodiff`: the rule is an autodiff baseline (`rules.RULES[name].autodiff`); `probes`,
    `probe_sigma`, `key`: see `rule_inputs`."""
    incoming, signals, _ = rule_inputs(
        model, autodiff, params, feedback, batch_stats, images, onehot, probes=probes,
        probe_sigma=probe_sigma, key=jax.random.key(0) if key is None else key)
    trainables = {"params": params, "feedback": feedback}
    state = rule.init(trainables) if rule_state is None else rule_state
    deltas, _ = rule.update(incoming, state, trainables, signals=signals, labels=onehot)
    return deltas


def train_step(
    state: TrainState, images: jax.Array, labels: jax.Array, *,
    model, tx: optax.GradientTransformation, autodiff: bool,
    key: jax.Array, noise_std: float, num_classes: int, sharding=None, augment: str = "none",
    normalization: str = "unit", probes: tuple[str, ...] = (), probe_sigma: float = 0.05,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One update: augmentation, input noise, one forward pass (and the probes' passes,
    `rule_inputs`), the optax chain. Pure.

    `tx` starts with the rule, which gets the forward signals and one-hot labels as extra
    args (local rules) or, with `autodiff` (`rules.RULES[name].autodiff`), the gradient
    through the model as its incoming updates. metrics["finite"] says whether the loss is
    finite (`train_steps` adds the state's health). A step whose loss or new BatchNorm
    statistics are non-finite keeps the old statistics (with on_nonfinite="skip" its update
    is skipped too, so a skipped batch leaves no trace in the state).
    """
    if sharding is not None:
        images = jax.lax.with_sharding_constraint(images, sharding)
        labels = jax.lax.with_sharding_constraint(labels, sharding)
    images = normalize(images, normalization)
    if augment == "crop_flip":
        images = crop_flip(jax.random.fold_in(jax.random.fold_in(key, 1), state.step), images)
    elif augment != "none":
        raise ValueError(f"Unknown augment {augment!r}; choose 'none' or 'crop_flip'.")
    if noise_std:
        noise_key = jax.random.fold_in(key, state.step)
        images = images + noise_std * jax.random.normal(noise_key, images.shape, images.dtype)
    onehot = jax.nn.one_hot(labels, num_classes)
    trainables = {"params": state.params, "feedback": state.feedback}
    incoming, signals, batch_stats = rule_inputs(
        model, autodiff, state.params, state.feedback, state.batch_stats, images, onehot,
        probes=probes, probe_sigma=probe_sigma,
        key=jax.random.fold_in(jax.random.fold_in(key, 3), state.step))
    updates, opt_state = tx.update(incoming, state.opt_state, trainables, signals=signals,
                                   labels=onehot)
    trainables = optax.apply_updates(trainables, updates)
    loss = rules.cross_entropy(signals["logits"], onehot)
    if batch_stats:
        ok = jnp.isfinite(loss) & all_finite(batch_stats)
        batch_stats = jax.tree.map(lambda new, old: jnp.where(ok, new, old), batch_stats,
                                   state.batch_stats)
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(signals["logits"], -1) == labels),
        "finite": jnp.isfinite(loss),
    }
    new_state = state.replace(step=state.step + 1, opt_state=opt_state,
                              batch_stats=batch_stats, **trainables)
    return new_state, metrics


def train_steps(state: TrainState, data, batches, **step_kwargs
                ) -> tuple[TrainState, dict[str, jax.Array]]:
    """`train_step` over K batches; returns the final state and per-step metrics (K, ...).

    Either `data` = (images, labels) resident on the device and `batches` = (K, B) row
    indices into them (in-memory sources), or `data` = None and `batches` = (images
    (K, B, ...), labels (K, B)) (streaming sources). One jitted call runs K steps with
    `lax.scan`, so Python dispatch is paid once per call. K = 1 runs the step without a
    loop: XLA:CPU runs convolutions inside a loop body about 10x slower than at top level
    (measured on a ResNet-18 step), so the ResNet configs use steps_per_call=1.
    metrics["finite"][k] says whether step k's loss is finite; metrics["state_finite"]
    whether the returned state is good to keep (`healthy`: everything finite, nothing
    exploding; checked once per call: a non-finite parameter stays non-finite).
    """

    def body(s, batch):
        images, labels = (data[0][batch], data[1][batch]) if data is not None else batch
        return train_step(s, images, labels, **step_kwargs)

    sharding = step_kwargs.get("sharding")
    if layer_axis(sharding) > 1:  # the state keeps its place on the mesh's layer axis
        state = jax.lax.with_sharding_constraint(state, state_shardings(state, sharding))

    if jax.tree.leaves(batches)[0].shape[0] == 1:
        state, metrics = body(state, jax.tree.map(lambda b: b[0], batches))
        metrics = jax.tree.map(lambda m: m[None], metrics)
    else:
        state, metrics = jax.lax.scan(body, state, batches)
    if layer_axis(sharding) > 1:
        state = jax.lax.with_sharding_constraint(state, state_shardings(state, sharding))
    metrics["state_finite"] = healthy(state)
    return state, metrics


def model_variables(params, batch_stats) -> dict:
    """The flax variables for inference: params plus BatchNorm running averages if any."""
    return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


def eval_step(params, batch_stats, images, labels, *, model,
              normalization: str = "unit") -> dict[str, jax.Array]:
    """Summed loss, top-1 and top-5 correct counts and the count of labels >= 0 (padding
    rows carry label -1); BatchNorm uses its running averages."""
    logits = model.apply(model_variables(params, batch_stats), normalize(images, normalization),
                         train=False)["logits"]
    valid = labels >= 0
    onehot = jax.nn.one_hot(jnp.where(valid, labels, 0), logits.shape[-1])
    top = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    hits = top == labels[:, None]
    return {
        "loss_sum": jnp.sum(jnp.where(valid, optax.softmax_cross_entropy(logits, onehot), 0.0)),
        "correct": jnp.sum(hits[:, 0] & valid),
        "correct_top5": jnp.sum(jnp.any(hits, axis=-1) & valid),
        "count": jnp.sum(valid),
    }


def data_mesh_sharding(batch_size: int, devices: int = 0, layer: int = 1
                       ) -> NamedSharding | None:
    """Batch sharding over a ('data', 'layer') mesh, or None for one device.

    `devices` devices on the 'data' axis (0: every device over `layer`), `layer` on the
    'layer' axis: the batch splits over 'data' and is whole on each 'layer' column; the
    state is placed by `state_shardings` (replicated over 'data', each tensor split over
    'layer'). Raises ValueError when the batch does not divide over the data axis (naming
    both numbers), when `layer` does not divide the devices, or when more devices are asked
    for than there are.
    """
    available = jax.device_count()
    if layer < 1 or available % layer:
        raise ValueError(f"mesh.layer={layer} does not divide the {available} visible "
                         f"devices.")
    n = devices or available // layer
    if n * layer > available or (jax.process_count() > 1 and n * layer != available):
        asked = f"mesh.data={n}" + (f" x mesh.layer={layer}" if layer > 1 else "")
        raise ValueError(f"{asked} devices asked for; {available} are visible"
                         + (" (with several processes the mesh spans all of them)"
                            if jax.process_count() > 1 else "") + ".")
    if batch_size % n:
        raise ValueError(f"batch_size={batch_size} does not divide over the {n} devices of the "
                         f"data axis: use a batch size that is a multiple of {n}, or set "
                         f"--config.mesh.data to a divisor of {batch_size}.")
    if n * layer == 1:
        return None
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:n * layer]).reshape(n, layer),
                             ("data", "layer"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    return NamedSharding(mesh, P("data"))


def layer_axis(sharding) -> int:
    """The size of the mesh's 'layer' axis (1 without one)."""
    if sharding is None:
        return 1
    return dict(sharding.mesh.shape).get("layer", 1)


def state_shardings(tree: Any, sharding: NamedSharding) -> Any:
    """Where each leaf of a train state lives on `sharding`'s mesh: replicated over 'data';
    over a 'layer' axis of n > 1 devices, every tensor whose last dimension (a layer's
    output channels or units, a synapse's, their optimizer moments') divides by n is split
    along it, so each device holds 1/n of every layer and computes 1/n of each layer's
    update (XLA partitions the step by these shardings); other leaves are replicated."""
    mesh, n = sharding.mesh, layer_axis(sharding)

    def place(x):
        shape = np.shape(x)
        if n > 1 and len(shape) >= 1 and shape[-1] % n == 0:
            return NamedSharding(mesh, P(*(None,) * (len(shape) - 1), "layer"))
        return NamedSharding(mesh, P())

    return jax.tree.map(place, tree)
