#!/usr/bin/env bash
# The pruning issue's real runs on CPU: the reference CIFAR-10 vgg11_bn (width 0.25, 84.08%) pruned
# at ratio 0.5 four ways with the same fine-tuning budget (10 epochs, SGD, cosine, lr 0.01), then
# one comparison report and a per-layer sensitivity scan. Usage: bash experiments/prune_runs.sh
# CIFAR-10 is the JPEG-derived copy that ../shared/data/cifar10/make_cifar10.py writes into data/.
set -euo pipefail
cd "$(dirname "$0")/.."
CK=${CK:-.venv/bin/compresskit}
ref=results/cifar10-e30-vgg11_bn-w0.25
[ -d data/cifar-10-batches-py ] || python3 ../shared/data/cifar10/make_cifar10.py data
common=(--checkpoint "$ref" --ratio 0.5 --finetune-epochs 10 --lr 0.01 --schedule cosine --seed 0
        --data-dir data --no-download --overwrite)
$CK prune "${common[@]}" --importance l1 --out results/prune-l1-r0.5
$CK prune "${common[@]}" --importance separation --out results/prune-separation-r0.5
$CK prune "${common[@]}" --importance l1 --allocate csi --out results/prune-csi-l1-r0.5
$CK prune "${common[@]}" --importance separation --allocate csi --out results/prune-csi-separation-r0.5
for run in results/prune-*-r0.5; do rm -f "$run/last.pt" "$run/pruned.pt"; done  # keep the fine-tuned checkpoint
runs=("$ref" results/prune-l1-r0.5 results/prune-separation-r0.5 results/prune-csi-l1-r0.5
      results/prune-csi-separation-r0.5)
$CK report "${runs[@]}" --out results/prune-report --threads 1 --bench-seconds 3 --overwrite
$CK report "${runs[@]}" --out results/prune-report-2threads --threads 2 --bench-seconds 3 --overwrite
$CK sensitivity --checkpoint "$ref" --ratios 0.25,0.5,0.75 --data-dir data --no-download
