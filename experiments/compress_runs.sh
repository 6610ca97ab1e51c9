#!/usr/bin/env bash
# The low-rank / depth issue's real runs on CPU, from the reference CIFAR-10 vgg11_bn (width 0.25):
# low-rank at energy 0.9, depth reduction at two CSI-gain thresholds, and combinations with the
# pruning runs of experiments/prune_runs.sh (run that first). Every run fine-tunes 10 epochs
# (SGD, cosine, lr 0.01). Then one report across all methods. Usage: bash experiments/compress_runs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CK=${CK:-.venv/bin/compresskit}
ref=results/cifar10-e30-vgg11_bn-w0.25
[ -d data/cifar-10-batches-py ] || python3 ../shared/data/cifar10/make_cifar10.py data
common=(--finetune-epochs 10 --lr 0.01 --seed 0 --data-dir data --no-download --overwrite)
$CK lowrank --from "$ref" --energy 0.9 --out results/lowrank-e0.9 "${common[@]}"
$CK depth --from "$ref" --min-gain 0.02 --out results/depth-g0.02 "${common[@]}"
$CK depth --from "$ref" --min-gain 0.05 --out results/depth-g0.05 "${common[@]}"
$CK prune --from results/depth-g0.02 --ratio 0.5 --allocate csi --out results/depth-g0.02-prune-csi-l1-r0.5 "${common[@]}"
$CK lowrank --from results/prune-csi-l1-r0.5 --energy 0.9 --out results/prune-csi-l1-r0.5-lowrank-e0.9 "${common[@]}"
for run in results/lowrank-* results/depth-* results/prune-csi-l1-r0.5-lowrank-*; do
  rm -f "$run/last.pt" "$run/factorized.pt" "$run/truncated.pt" "$run/pruned.pt"
done
$CK report "$ref" results/prune-l1-r0.5 results/prune-csi-l1-r0.5 results/lowrank-e0.9 results/depth-g0.02 \
  results/depth-g0.05 results/depth-g0.02-prune-csi-l1-r0.5 results/prune-csi-l1-r0.5-lowrank-e0.9 \
  --out results/compression-report --threads 1 --bench-seconds 3 --overwrite
