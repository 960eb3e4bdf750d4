r"""MNIST, 784-256-256-256-10 tanh MLP: configs/fmnist_mlp.py with dataset=mnist.

Command (MNIST has no Debian package: point data.dir at the four IDX files, or let tfds
download it with TensorFlow installed and --config.data.download=True):

  python -m experiments.mnist --config=configs/mnist_mlp.py --workdir=/tmp/mnist \
      --config.rule=rec_lra --config.data.dir=/path/to/mnist

Measured (2-core CPU, seed 0, 100 epochs; README.md "Results"): test accuracy rec-LRA
98.36 %, backprop 98.55 %, LRA-E 98.24 %, FA 97.96 %, DFA 98.25 %; about 5 minutes per rule
on an idle machine. Arguments: `smoke`, `demo` as in fmnist_mlp.py.
"""

from configs import fmnist_mlp


def get_config(arg: str | None = None):
    config = fmnist_mlp.get_config(arg)
    config.dataset = "mnist"
    return config
