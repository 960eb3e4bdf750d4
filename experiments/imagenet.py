"""ImageNet: python -m experiments.imagenet --config=configs/resnet18.py --workdir=DIR."""

from experiments import main

if __name__ == "__main__":
    main.run("imagenet2012")
