"""CIFAR-10: python -m experiments.cifar10 --config=configs/cifar10_resnet18.py --workdir=DIR."""

from experiments import main

if __name__ == "__main__":
    main.run("cifar10")
