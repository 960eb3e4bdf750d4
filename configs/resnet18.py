r"""ImageNet (ILSVRC-2012), ResNet-18 (ImageNet stem), rec-LRA by default.

  python -m experiments.imagenet --config=configs/resnet18.py --workdir=/tmp/imagenet_r18 \
      --config.data.tfds_data_dir=~/tensorflow_datasets [--config.rule=bp]

Data: tfds imagenet2012 prepared as array_record, or an image-folder tree
(`--config.data.dir=DIR` with DIR/train/<class>/*.JPEG and DIR/val/<class>/*.JPEG).
Standard preprocessing on grain reader threads (random resized crop + flip; resize 256
and center crop 224 for eval), 90 epochs, cosine schedule, top-1 and top-5. The last 10,000
training images are the validation split (model selection); the test figures are on
ImageNet's validation set. rec-LRA runs the short-path wiring chosen on CIFAR-10
(configs/cifar10_resnet18.py: 5 target hops, stage ends from their own linear readouts,
whose size does not grow with the classes times the map, unlike dense e_L synapses'
~200M here). `--config.rule=kp` runs the Kolen-Pollack chain (17 hops): synapses shaped
like the kernels, errors rescaled by 1 / beta, beta 0.05, started by a weight mirror.
Through this config's ImageNet stem (CIFAR-10 JPEG copy at 32x32, width 8, 10 epochs, 3
seeds) kp matched backprop, where the first release's channel-factorised e_L synapses
trailed by 15 points (docs/experiments/history.md, "ImageNet stem and wiring, CIFAR-10 proxy",
measured as rec-LRA's "mirror" wiring). Not run on ImageNet here (no ImageNet on this
machine).
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
    # The CIFAR-10 config's rec-LRA wiring (see it for each choice; stages as modules,
    # stage ends from their own readouts on a 4x4 grid, 2x2 on the 14x14 map); not run on
    # ImageNet. The weight mirror runs at a fresh start (a resume
    # restores the synapses): ~2 * 100 * fan_in^2 * C_out flops per conv, 533 s for
    # ResNet-18 at 224x224 on a 2-core CPU (BENCHMARKS.md).
    # ResNet-50's stages chain 9-18 units (3-6 bottlenecks of 3 convs): its modules are
    # its blocks (3 target hops), each block end from its own readout.
    config.lra.module = "stage" if depth == 18 else "block"
    config.lra.local_loss = "only"
    config.lra.local_loss_grid = 4
    config.lra.rescale = True
    config.lra.feedback_scale = 0.1
    config.lra.beta = 0.05
    config.lra.weight_mirror = 100.0
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
