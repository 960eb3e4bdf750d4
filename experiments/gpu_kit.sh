#!/usr/bin/env bash
# Builds the folder that experiments/full_width.sh needs on an offline GPU machine.
#
#   bash experiments/gpu_kit.sh FMNIST_DIR CIFAR_TARBALL [KIT]
#
# FMNIST_DIR holds the four gzipped Fashion-MNIST IDX files; CIFAR_TARBALL is a .tar.gz of
# a CIFAR-10 image-folder tree (train/<class>/*, test/<class>/*). KIT (default .gpu, which
# .gitignore lists, so the device tool carries it with carry=[".gpu"]) receives:
#   wheels/         Python 3.12 manylinux wheels of what a bare jax+flax+optax+orbax
#                   machine lacks (ml-collections, grain, pillow, tensorboardX and theirs)
#   fashion-mnist/  copies of the IDX files
#   cifar10-jpeg.tar.gz
# It needs a package registry (pip download) and takes about a minute. Then, on the GPU:
#   FMNIST_DIR=.gpu/fashion-mnist CIFAR_DIR=.gpu/cifar10-jpeg.tar.gz WHEELS=.gpu/wheels \
#     RUNS=/tmp/fw DEADLINE=500 bash experiments/full_width.sh
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
FMNIST_DIR=$1
CIFAR_TARBALL=$2
KIT=${3:-.gpu}
PY=${PYTHON:-$(command -v python3 || command -v python)}
for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz \
         t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
  [ -f "$FMNIST_DIR/$f" ] || { echo "gpu_kit: $FMNIST_DIR/$f is missing" >&2; exit 1; }
done
[ -f "$CIFAR_TARBALL" ] || { echo "gpu_kit: $CIFAR_TARBALL is not a file" >&2; exit 1; }
mkdir -p "$KIT/wheels" "$KIT/fashion-mnist"
echo "gpu_kit: downloading cp312 wheels into $KIT/wheels ..."
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --implementation cp \
  -d "$KIT/wheels" ml-collections tensorboardX pillow grain array-record cloudpickle \
  portpicker PyYAML
cp "$FMNIST_DIR"/*-ubyte.gz "$KIT/fashion-mnist/"
cp "$CIFAR_TARBALL" "$KIT/cifar10-jpeg.tar.gz"
du -sh "$KIT"
echo "gpu_kit: ready. Run on the GPU machine with carry=[\"$KIT\"]."
