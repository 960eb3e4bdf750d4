r"""Fashion-MNIST, ResNet-18 (CIFAR stem), rec-LRA by default.

Command (swap the rule with --config.rule=bp|fa|dfa|sign_symmetry):

  python -m experiments.fashion_mnist --config=configs/fmnist_resnet18.py:full \
      --workdir=/tmp/fmnist_resnet18 --config.rule=rec_lra

Every rule uses the same model, data order, optimizer and seed; only the update rule
changes. Results and the exact commands: BENCHMARKS.md. Arguments after the colon:
none (width 8, 10 epochs: sized for a 2-core CPU, about 35 minutes per rule there),
`full` (the standard width 64, 15 epochs: about 40 s of training per rule on an H100;
rec-LRA 91.38 %, backprop 92.58 %, seed 0), `smoke` (a width-4 net on synthetic data,
seconds; used by the tests).
"""

from configs import fmnist_mlp


def get_config(arg: str | None = None) -> "ml_collections.ConfigDict":  # noqa: F821
    config = fmnist_mlp.get_config()
    config.unlock()
    config.model = {"name": "resnet", "depth": 18, "width": 8, "stem": "cifar",
                    "use_bn": True, "bn_affine": True, "init": "he"}
    config.lra.skip_source = "dense"  # dense | channel | head (SPEC's three sources)
    config.lra.bn_error = "jacobian"  # jacobian | output | scaled
    config.lra.feedback_scale = 1.0  # synapse std = scale * sqrt(2 / fan_in)
    config.lra.head_last = True  # last block driven through the head (avg-pool adjoint)
    config.lra.depth = 2  # 1: every layer straight from e_L
    config.optim.lr = 3e-3
    config.optim.weight_decay = 0.05
    config.batch_size = 128
    config.eval_batch_size = 500
    config.num_epochs = 10
    config.steps_per_call = 1  # XLA:CPU runs convs ~10x slower inside a scan body
    config.log_every_steps = 100
    config.checkpoint_every_steps = 453  # one epoch (58k / 128)
    if arg == "smoke":
        config.dataset = "synthetic"
        config.model.width = 4
        config.batch_size = 32
        config.eval_batch_size = 128
        config.num_epochs = 2
        config.checkpoint_every_steps = 10
        config.steps_per_call = 4
    elif arg == "full":
        config.model.width = 64
        config.num_epochs = 15
    elif arg:
        raise ValueError(f"Unknown config argument {arg!r}; use 'full' or 'smoke'.")
    config.lock()
    return config
