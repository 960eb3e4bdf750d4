r"""Fashion-MNIST, 784-256-256-256-10 tanh MLP (the paper's setup), rec-LRA by default.

Command (full run; swap the rule with --config.rule=bp|lra_e|fa|dfa):

  python -m experiments.fashion_mnist --config=configs/fmnist_mlp.py --workdir=/tmp/fmnist \
      --config.rule=rec_lra

Measured (2-core CPU, jax 0.10.2, seed 0, 100 epochs; BENCHMARKS.md, "MLPs"): test accuracy
rec-LRA 88.86 %, backprop 90.09 %, LRA-E 89.30 %, FA 88.13 %, DFA 89.50 %. About 2.5 ms per
train step, so about 3 s per epoch and 5 minutes per rule on an idle machine.
Arguments after the colon: `smoke` (synthetic data, seconds, used by tests) or `demo`
(20 epochs for `make demo`: rec-LRA 89.57 %, backprop 90.28 %, about 1 minute per rule on
an idle machine).
Every key and its default: configs/base.py.
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = base.get_config("mlp")
    config.dataset = "fashion_mnist"
    if arg == "smoke":
        config.data.source = "synthetic"
        config.model.hidden = (32, 32, 32)
        config.batch_size = 32
        config.eval_batch_size = 128
        config.num_epochs = 2
        config.checkpoint_every_epochs = 0.625  # every 10 of the 16 steps per epoch
        config.steps_per_call = 4
    elif arg == "demo":
        config.num_epochs = 20
        config.log_every_steps = 2000  # a progress line (loss, steps/s, ETA) every few seconds
        config.diagnostics.cosine = True  # for the plots: per-layer cosine to backprop
        config.diagnostics.test_curve = True  # and test accuracy per epoch
    elif arg:
        raise ValueError(f"Unknown config argument {arg!r}; use 'smoke' or 'demo'.")
    config.lock()
    return config
