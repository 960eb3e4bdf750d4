r"""ImageNet (ILSVRC-2012), ResNet-50: configs/resnet18.py with the Bottleneck net.

  python -m experiments.imagenet --config=configs/resnet50.py --workdir=/tmp/imagenet_r50 \
      --config.data.tfds_data_dir=~/tensorflow_datasets

Arguments: `smoke` (synthetic records, 32x32, width 4; used by CI).
"""

from configs import resnet18


def get_config(arg: str | None = None):
    return resnet18.get_config(arg, depth=50)
