"""Trains on Fashion-MNIST: python -m experiments.fashion_mnist --config=... --workdir=..."""

from experiments import main

if __name__ == "__main__":
    main.run("fashion_mnist")
