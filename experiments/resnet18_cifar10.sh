#!/usr/bin/env bash
# A torchvision model through compresskit: ResNet-18 on CIFAR-10 (JPEG-derived copy), then pruned to about
# half its MACs (--ratio 0.3 of every channel group) with l1 importance, uniform and CSI-allocated, each
# fine-tuned 3 epochs alike, then one report beside each other. Resumable: a finished step is skipped.
# STEM=cifar (default): --cifar-stem, 8 epochs (about 3.5 min an epoch on a 2-core CPU with native bf16);
# STEM=imagenet: torchvision's own 7×7/2 stem and max-pool (16× fewer MACs at 32×32), 12 epochs (about a
# minute each there).
# Usage: [STEM=cifar|imagenet] bash experiments/resnet18_cifar10.sh [DATA_DIR] [OUT_ROOT]
set -euo pipefail
cd "$(dirname "$0")/.."
CK=.venv/bin/compresskit
data=(--data-dir "${1:-data}" --no-download)
root=${2:-runs/resnet18}
state() { .venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['state'])" "$1/run.json" 2>/dev/null || echo none; }
step() {  # step OUT COMMAND FLAGS...
  local out=$1 command=$2; shift 2
  case "$(state "$out")" in
    finished) echo "$out: finished" ;;
    none) $CK "$command" "$@" --out "$out" --quiet ;;
    *) $CK "$command" --resume "$out" "${data[@]}" --quiet ;;
  esac
}
case "${STEM:-cifar}" in
  cifar) stem=(--cifar-stem); epochs=8 ;;
  imagenet) stem=(); epochs=12 ;;
  *) echo "STEM must be cifar or imagenet" >&2; exit 2 ;;
esac
ref=$root/resnet18-${STEM:-cifar}-stem-e$epochs
step "$ref" train --model torchvision:resnet18 "${stem[@]}" --dataset cifar10 "${data[@]}" --epochs "$epochs" \
  --batch-size 128 --lr 0.1 --label-smoothing 0.1 --weight-decay 5e-4 --augment crop=4,flip --seed 0
tune=(--ratio 0.3 --importance l1 --finetune-epochs 3 --lr 0.01 --seed 0 "${data[@]}")
step "$root/prune-l1-r0.3" prune --checkpoint "$ref" "${tune[@]}"
step "$root/prune-csi-l1-r0.3" prune --checkpoint "$ref" --allocate csi "${tune[@]}"
[ -d "$root/report" ] || $CK report "$ref" "$root/prune-l1-r0.3" "$root/prune-csi-l1-r0.3" --out "$root/report" --threads 2
