"""Trains on MNIST: python -m experiments.mnist --config=configs/mnist_mlp.py --workdir=..."""

from experiments import main

if __name__ == "__main__":
    main.run("mnist")
