r"""CIFAR-10, ResNet-18 (CIFAR stem, full width), rec-LRA by default.

  python -m experiments.cifar10 --config=configs/cifar10_resnet18.py --workdir=/tmp/cifar10 \
      --config.data.dir=/path/to/cifar-10-batches-py

Data: the extracted cifar-10-python.tar.gz (`data.dir`), or tfds "cifar10" prepared as
array_record. Split 45k / 5k / 10k (the paper's). Training augmentation: pad-4 random
crop and horizontal flip, on device inside the jitted step. A full-width ResNet-18 step
at batch 128 takes seconds on a CPU: this config is meant for accelerators.
Arguments: `smoke` (a width-4 net on synthetic 32x32x3 data, seconds; used by CI).
"""

from configs import fmnist_resnet18


def get_config(arg: str | None = None) -> "ml_collections.ConfigDict":  # noqa: F821
    config = fmnist_resnet18.get_config()
    config.unlock()
    config.dataset = "cifar10"
    config.data.val_size = 5000
    config.data.synthetic_shape = (32, 32, 3)
    config.model.width = 64
    config.augment = "crop_flip"
    config.input_noise = 0.0
    config.num_epochs = 100
    config.checkpoint_every_steps = 1000
    if arg == "smoke":
        config.dataset = "synthetic"
        config.model.width = 4
        config.batch_size = 32
        config.eval_batch_size = 128
        config.num_epochs = 1
        config.checkpoint_every_steps = 8
        config.steps_per_call = 4
    elif arg:
        raise ValueError(f"Unknown config argument {arg!r}; use 'smoke'.")
    config.lock()
    return config
