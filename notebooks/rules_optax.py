# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Rules as optax transforms
#
# Every update rule of rec_lra_jax (rec-LRA, LRA-E, DFA, Kolen-Pollack, backprop, FA, sign
# symmetry) is a plain `optax.GradientTransformationExtraArgs`. A local rule's `update`
# reads the forward signals and the labels your step passes as extra arguments and returns
# local deltas for `{"params": forward weights, "feedback": error synapses}`. This notebook
# chains a rule with an optimizer, schedules beta with `optax.inject_hyperparams`,
# accumulates micro-batches with `optax.MultiSteps` (checked against one step on their
# union), gives the synapses their own optimizer with `optax.partition`, and trains a flax
# model of your own. Seconds on any runtime; random data, no download.

# %% tags=["parameters"]
import os

SMOKE = os.environ.get("REC_LRA_SMOKE", "0") == "1"  # fewer steps
STEPS = 20 if SMOKE else 300
# Outside a clone of the repository (Colab): its git URL, to clone and install it.
REPOSITORY = os.environ.get("REC_LRA_REPOSITORY", "")

# %% [markdown]
# ## Set-up: the library from the repository, the device

# %%
import subprocess
import sys


def repository_root():
    """The clone this notebook runs in (its folder or the one above), or a fresh clone."""
    for folder in (os.getcwd(), os.path.dirname(os.getcwd())):
        if os.path.exists(os.path.join(folder, "rec_lra_jax", "__init__.py")):
            return folder
    if not REPOSITORY:
        raise RuntimeError("Not inside a clone of rec_lra_jax: set REPOSITORY (the "
                           "parameter cell) to the repository's git URL to clone it.")
    folder = os.path.abspath("rec_lra_jax")
    if not os.path.exists(folder):
        subprocess.run(["git", "clone", "--depth=1", REPOSITORY, folder], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", folder], check=True)
    return folder


ROOT = repository_root()
os.chdir(ROOT)
sys.path.insert(0, ROOT)

import jax

print(f"jax {jax.__version__}: {jax.device_count()} {jax.devices()[0].platform.upper()} "
      f"device(s), {jax.devices()[0].device_kind}")

# %% [markdown]
# ## A problem: a tanh MLP and a learnable labelling of random inputs

# %%
import jax.numpy as jnp
import numpy as np
import optax

import rec_lra_jax as rl

x = jax.random.normal(jax.random.key(0), (64, 20))
labels = jax.nn.one_hot(jnp.argmax(x[:, :10] @ jax.random.normal(jax.random.key(1), (10, 10)),
                                   -1), 10)
model = rl.MLP(features=(64, 64, 10), activation="tanh")  # returns the per-layer signals
params = model.init(jax.random.key(2), x)["params"]
signals = model.apply({"params": params}, x)
print({k: [v.shape for v in vs] for k, vs in signals.items() if k != "logits"})


def train(tx, trainables, steps=STEPS, batches=None):
    """A user's own jitted step: one forward pass, the rule's deltas, the optimizer."""

    @jax.jit
    def step(trainables, opt_state, x, labels):
        signals = model.apply({"params": trainables["params"]}, x)
        updates, opt_state = tx.update(trainables, opt_state, trainables, signals=signals,
                                       labels=labels)
        return optax.apply_updates(trainables, updates), opt_state, signals["logits"]

    opt_state, losses = tx.init(trainables), []
    for i in range(steps):
        xb, yb = batches(i) if batches else (x, labels)
        trainables, opt_state, logits = step(trainables, opt_state, xb, yb)
        losses.append(float(rl.rules.cross_entropy(logits, yb)))
    return trainables, losses


# %% [markdown]
# ## Chain a rule with an optimizer
#
# The error synapses come from the wiring, as parameters come from `model.init`.

# %%
feedback = rl.Wiring().init(jax.random.key(3), signals, params, activation="tanh")
trainables = {"params": params, "feedback": feedback}
tx = optax.chain(rl.rec_lra(activation="tanh"), rl.clip_by_tensor_norm(1.0),
                 optax.adamw(1e-3, weight_decay=1e-4))
_, losses = train(tx, trainables)
print(f"rec-LRA + AdamW: loss {losses[0]:.3f} -> {losses[-1]:.3f}")

# %% [markdown]
# ## Schedule beta with `optax.inject_hyperparams`
#
# beta (how far each target moves) follows a schedule; the step is compiled once.

# %%
scheduled = optax.inject_hyperparams(rl.rec_lra)(
    beta=optax.cosine_decay_schedule(0.1, STEPS, alpha=0.1), activation="tanh")
tx = optax.chain(scheduled, optax.adamw(1e-3, weight_decay=1e-4))
_, losses = train(tx, trainables)
print(f"beta 0.1 -> 0.01 (cosine): loss {losses[0]:.3f} -> {losses[-1]:.3f}")

# %% [markdown]
# ## Accumulate micro-batches with `optax.MultiSteps`
#
# A local rule reads the signals of the call it is in, so the accumulation goes after the
# rule: `chain(rule, MultiSteps(opt, k))`. Over two halves of the batch it makes exactly
# the step that one call on the whole batch makes (each delta is a mean over examples).
# Wrapping the rule itself (`MultiSteps(chain(rule, opt), k)`) is refused when traced.

# %%
halves = lambda i: (x[32 * (i % 2): 32 * (i % 2) + 32], labels[32 * (i % 2): 32 * (i % 2) + 32])
accumulated, _ = train(optax.chain(rl.rec_lra(activation="tanh"),
                                   optax.MultiSteps(optax.sgd(0.1), 2)),
                       trainables, steps=2, batches=halves)
whole, _ = train(optax.chain(rl.rec_lra(activation="tanh"), optax.sgd(0.1)), trainables,
                 steps=1)
gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
    jax.tree.leaves(accumulated), jax.tree.leaves(whole), strict=True))
print(f"two accumulated micro-batches vs one step on their union: max difference {gap:.1e}")
assert gap < 1e-5
try:
    train(optax.MultiSteps(optax.chain(rl.rec_lra(activation="tanh"), optax.sgd(0.1)), 2),
          trainables, steps=1)
except ValueError as e:
    print("refused:", str(e)[:200], "...")

# %% [markdown]
# ## The synapses their own optimizer: `optax.partition`
#
# After the rule, `optax.partition` sends the forward weights' deltas to AdamW and the
# synapses' to plain SGD with momentum (or `optax.set_to_zero()` to freeze them).

# %%
tx = optax.chain(rl.rec_lra(activation="tanh"), optax.partition(
    {"weights": optax.adamw(1e-3, weight_decay=1e-4), "synapses": optax.sgd(1e-2, 0.9)},
    {"params": "weights", "feedback": "synapses"}))
_, losses = train(tx, trainables)
print(f"AdamW for W, SGD for E: loss {losses[0]:.3f} -> {losses[-1]:.3f}")

# %% [markdown]
# ## Bring your own flax model
#
# Any module that returns the per-layer signals works (docs/algorithm.md, "Model
# contract"): here a gelu MLP whose middle layer has no bias. The rule needs its
# activation.

# %%
import flax.linen as nn


class GeluNet(nn.Module):
    @nn.compact
    def __call__(self, x, *, train=False):
        z, inputs, pre, post = x, [], [], []
        for i, (width, bias) in enumerate(((48, True), (32, False), (10, True))):
            inputs.append(z)
            h = nn.Dense(width, use_bias=bias, name=f"dense_{i}")(z)
            z = jax.nn.gelu(h) if i < 2 else jax.nn.softmax(h)
            pre.append(h)
            post.append(z)
        return {"inputs": tuple(inputs), "pre": tuple(pre), "post": tuple(post), "logits": h}


model = GeluNet()
params = model.init(jax.random.key(4), x)["params"]
feedback = rl.Wiring().init(jax.random.key(5), model.apply({"params": params}, x), params,
                            activation=jax.nn.gelu)
tx = optax.chain(rl.rec_lra(activation=jax.nn.gelu), optax.adam(3e-3))
_, losses = train(tx, {"params": params, "feedback": feedback})
print(f"your own model, rec-LRA: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
assert np.isfinite(losses[-1]) and losses[-1] < losses[0]
