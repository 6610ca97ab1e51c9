#!/usr/bin/env bash
# The foundation issue's real runs on CPU. Usage: bash experiments/real_runs.sh NAME
#   cifar10-e30         vgg11_bn width 0.25, 30 epochs, crop=4 + flip (the first attempt)
#   cifar10-e40         the same for 40 epochs
#   cifar10-e40-crop2   40 epochs with a 2-pixel crop instead of 4
#   cifar10-e35-crop2-mlp  35 epochs, 2-pixel crop, mlp head (128→128→10 at this width)
#   cifar10-e30-b64     30 epochs, 2-pixel crop, batch 64, peak lr 0.05
#   cifar10-e30-nols    30 epochs, 2-pixel crop, peak lr 0.05, no label smoothing
#   cifar10-e40-crop2-cutout  40 epochs, 2-pixel crop + 8-pixel cutout; also evaluated with
#                       --tta flip-translate (its evaluation files hold that evaluation)
#   fashion-mnist       the same model, 15 epochs on Fashion-MNIST
# CIFAR-10 is the JPEG-derived complete copy that ../shared/data/cifar10/make_cifar10.py writes;
# Fashion-MNIST comes from Debian's dataset-fashion-mnist package (/usr/share/datasets/fashion-mnist).
set -euo pipefail
cd "$(dirname "$0")/.."
CK=${CK:-.venv/bin/compresskit}
name=${1:?usage: $0 cifar10-e30|cifar10-e40|cifar10-e40-crop2|cifar10-e35-crop2-mlp|cifar10-e30-b64|cifar10-e30-nols|cifar10-e40-crop2-cutout|fashion-mnist}
common=(--model vgg11_bn --width 0.25 --batch-size 128 --lr 0.1 --schedule onecycle
        --label-smoothing 0.1 --weight-decay 5e-4 --seed 0 --overwrite)
cifar=(--dataset cifar10 --data-dir data --no-download)
case "$name" in
  cifar10-*) [ -d data/cifar-10-batches-py ] || python3 ../shared/data/cifar10/make_cifar10.py data ;;
esac
run=results/$name-vgg11_bn-w0.25
case "$name" in
  cifar10-e30)       $CK train "${common[@]}" "${cifar[@]}" --epochs 30 --augment crop,flip --out "$run" ;;
  cifar10-e40)       $CK train "${common[@]}" "${cifar[@]}" --epochs 40 --augment crop,flip --out "$run" ;;
  cifar10-e40-crop2) $CK train "${common[@]}" "${cifar[@]}" --epochs 40 --augment crop=2,flip --out "$run" ;;
  cifar10-e35-crop2-mlp)
    $CK train "${common[@]}" "${cifar[@]}" --epochs 35 --augment crop=2,flip --head mlp --out "$run" ;;
  cifar10-e30-b64)
    $CK train "${common[@]}" "${cifar[@]}" --epochs 30 --augment crop=2,flip --batch-size 64 --lr 0.05 \
      --out "$run" ;;
  cifar10-e30-nols)
    $CK train "${common[@]}" "${cifar[@]}" --epochs 30 --augment crop=2,flip --lr 0.05 --label-smoothing 0 \
      --out "$run" ;;
  cifar10-e40-crop2-cutout)
    $CK train "${common[@]}" "${cifar[@]}" --epochs 40 --augment crop=2,flip,cutout=8 --out "$run" ;;
  fashion-mnist)
    $CK train "${common[@]}" --dataset fashion-mnist --data-dir /usr/share/datasets/fashion-mnist \
      --epochs 15 --augment crop,flip --out "$run" ;;
  *) echo "unknown run '$name'" >&2; exit 2 ;;
esac
$CK evaluate --checkpoint "$run"
[ "$name" = cifar10-e40-crop2-cutout ] && $CK evaluate --checkpoint "$run" --tta flip-translate
rm -f "$run/last.pt"  # keep only the best checkpoint (later issues analyze and prune it)
