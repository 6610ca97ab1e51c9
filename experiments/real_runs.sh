#!/usr/bin/env bash
# The foundation issue's real runs, on 2 CPU cores. Usage: bash experiments/real_runs.sh [cifar10|fashion-mnist]
# CIFAR-10: the JPEG-derived complete copy, written by ../shared/data/cifar10/make_cifar10.py data
# Fashion-MNIST: Debian's dataset-fashion-mnist package (/usr/share/datasets/fashion-mnist).
set -euo pipefail
cd "$(dirname "$0")/.."
CK=${CK:-.venv/bin/compresskit}
what=${1:-cifar10}
case "$what" in
  cifar10)
    [ -d data/cifar-10-batches-py ] || python3 ../shared/data/cifar10/make_cifar10.py data
    run=results/cifar10-vgg11_bn-w0.25
    $CK train --model vgg11_bn --width 0.25 --dataset cifar10 --data-dir data --no-download \
      --epochs 30 --batch-size 128 --lr 0.1 --schedule onecycle --label-smoothing 0.1 \
      --weight-decay 5e-4 --augment crop,flip --seed 0 --out "$run" --overwrite
    ;;
  fashion-mnist)
    run=results/fashion-mnist-vgg11_bn-w0.25
    $CK train --model vgg11_bn --width 0.25 --dataset fashion-mnist \
      --data-dir /usr/share/datasets/fashion-mnist \
      --epochs 15 --batch-size 128 --lr 0.1 --schedule onecycle --label-smoothing 0.1 \
      --weight-decay 5e-4 --augment crop,flip --seed 0 --out "$run" --overwrite
    ;;
  *) echo "usage: $0 [cifar10|fashion-mnist]" >&2; exit 2 ;;
esac
$CK evaluate --checkpoint "$run"
rm -f "$run/last.pt"  # the best checkpoint is kept for later analysis; last.pt would double the size
