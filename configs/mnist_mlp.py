r"""MNIST, 784-256-256-256-10 tanh MLP: configs/fmnist_mlp.py with dataset=mnist.

Command (MNIST has no Debian package: point data.dir at the four IDX files, or let tfds
download it with TensorFlow installed and --config.data.download=True):

  python -m experiments.mnist --config=configs/mnist_mlp.py --workdir=/tmp/mnist \
      --config.rule=rec_lra --config.data.dir=/path/to/mnist

Input noise 0.3 (instead of Fashion-MNIST's 0.1) was chosen for rec-LRA on MNIST's
validation split (docs/experiments/history.md, "MNIST: input noise"): 100 epochs, seeds 0-2, rec-LRA
98.69 +- 0.05 % test on the 2-core CPU, about 5 minutes per run on an idle machine.
Arguments: `smoke`, `demo` as in fmnist_mlp.py.
"""

from configs import fmnist_mlp


def get_config(arg: str | None = None):
    config = fmnist_mlp.get_config(arg)
    config.dataset = "mnist"
    config.input_noise = 0.3
    return config
