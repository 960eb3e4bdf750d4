r"""ImageNet (ILSVRC-2012), ResNet-18 (ImageNet stem), rec-LRA by default.

  python -m experiments.imagenet --config=configs/resnet18.py --workdir=/tmp/imagenet_r18 \
      --config.data.tfds_data_dir=~/tensorflow_datasets [--config.rule=bp]

Data: tfds imagenet2012 prepared as array_record, or an image-folder tree
(`--config.data.dir=DIR` with DIR/train/<class>/*.JPEG and DIR/val/<class>/*.JPEG).
Standard preprocessing on grain reader threads (random resized crop + flip; resize 256
and center crop 224 for eval), 90 epochs, cosine schedule, top-1 and top-5. The last 10,000
training images are the validation split (model selection); the test figures are on
ImageNet's validation set. Block outputs take their displacement from e_L through
channel-factorised synapses (1000 x C): the dense source would need ~200M synapses at this
resolution, and the "head" chain did not learn in our small-scale checks (README,
"ResNets"). Not run here (no ImageNet on this machine).
Arguments: `smoke` (synthetic records through the same grain pipeline, 32x32, width 4;
seconds, used by CI).
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None, depth: int = 18) -> ml_collections.ConfigDict:
    config = base.get_config("resnet")
    config.dataset = "imagenet2012"
    config.model.depth = depth
    config.model.stem = "imagenet"
    config.lra.skip_source = "channel"
    config.optim.lr = 1e-3
    config.batch_size = 256
    config.eval_batch_size = 250
    config.num_epochs = 90
    config.input_noise = 0.0
    config.checkpoint_every_epochs = 0.5
    if arg == "smoke":
        config.data.source = "synthetic"
        config.data.synthetic_size = 24
        config.data.val_size = 8
        config.data.image_size = 32
        config.data.threads = 2
        config.data.processes = 2 if depth == 50 else 0  # CI covers both reader kinds
        config.model.width = 4
        config.batch_size = 8
        config.eval_batch_size = 8
        config.num_epochs = 1
        config.log_every_steps = 1
    elif arg:
        raise ValueError(f"Unknown config argument {arg!r}; use 'smoke'.")
    config.lock()
    return config
