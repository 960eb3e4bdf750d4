r"""ImageNet (ILSVRC-2012), ResNet-18 (ImageNet stem), rec-LRA by default.

  python -m experiments.imagenet --config=configs/resnet18.py --workdir=/tmp/imagenet_r18 \
      --config.data.tfds_data_dir=~/tensorflow_datasets [--config.rule=bp]

Standard preprocessing (random resized crop + flip; resize 256 and center crop 224 for
eval), 90 epochs, cosine schedule, top-1 and top-5 on the validation split. The block
outputs take their displacement from e_L through channel-factorised synapses (1000 x C):
the dense source would need ~200M synapses at this resolution, and the SPEC's "head" chain
did not learn in our small-scale checks (README, "ResNets"). Not run here (no ImageNet on
this machine); the numbers in README are from CIFAR-sized and Fashion-MNIST runs.
Arguments: `smoke` (tfds mock data, 32x32, width 4; seconds, used by CI).
"""

import ml_collections

from configs import fmnist_resnet18


def get_config(arg: str | None = None, depth: int = 18) -> ml_collections.ConfigDict:
    config = fmnist_resnet18.get_config()
    config.unlock()
    config.dataset = "imagenet2012"
    config.num_classes = 1000
    config.model.depth = depth
    config.model.width = 64
    config.model.stem = "imagenet"
    config.lra.skip_source = "channel"
    config.data = ml_collections.ConfigDict({
        "tfds_data_dir": "", "image_size": 224, "workers": 16, "limit": 0,
        "mock_examples": 0})
    config.optim.lr = 1e-3
    config.optim.weight_decay = 0.05
    config.batch_size = 256
    config.eval_batch_size = 250
    config.num_epochs = 90
    config.input_noise = 0.0
    config.log_every_steps = 100
    config.checkpoint_every_steps = 2000
    if arg == "smoke":
        config.model.width = 4
        config.data.image_size = 32
        config.data.mock_examples = 24
        config.data.workers = 2
        config.batch_size = 8
        config.eval_batch_size = 8
        config.num_epochs = 1
        config.log_every_steps = 1
        config.checkpoint_every_steps = 2
    elif arg:
        raise ValueError(f"Unknown config argument {arg!r}; use 'smoke'.")
    config.lock()
    return config
