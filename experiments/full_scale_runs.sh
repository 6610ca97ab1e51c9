#!/usr/bin/env bash
# Full-width VGG on CIFAR-10 and compression at the literature's scale, as one resumable plan.
#
# Every step is a live run directory under runs/ (git-ignored): a step that finished is skipped, a
# step that stopped (Ctrl-C, SIGTERM, a crash, the end of a session) is continued with --resume,
# and a step never started is started. Run it again and again until everything says "finished".
# On a 2-core CPU in fp32 a full-width vgg16_bn epoch takes about 10 minutes (78 img/s), so the
# whole plan is many hours; with a GPU (--device cuda, bf16 autocast) it takes well under one.
#
# Usage: bash experiments/full_scale_runs.sh [DATA_DIR]   (DATA_DIR holds cifar-10-batches-py/)
set -euo pipefail
cd "$(dirname "$0")/.."
CK=.venv/bin/compresskit
data=(--data-dir "${1:-data}" --no-download)

state_of() {  # the state in RUN/run.json, or "none"
  .venv/bin/python -c "import json, sys; print(json.load(open(sys.argv[1]))['state'])" "$1/run.json" \
    2>/dev/null || echo none
}

step() {  # step OUT COMMAND FLAGS...: start OUT, resume it, or skip it when finished
  local out=$1 command=$2
  shift 2
  case "$(state_of "$out")" in
    finished) echo "$out: finished" ;;
    none) $CK "$command" "$@" --out "$out" ;;
    *) $CK "$command" --resume "$out" "${data[@]}" ;;
  esac
}

recipe=(--epochs 30 --batch-size 128 --lr 0.1 --label-smoothing 0.1 --weight-decay 5e-4 --augment crop=4,flip
        --seed 0)
step runs/cifar10-vgg16_bn-w1-e30 train --dataset cifar10 "${data[@]}" --model vgg16_bn --width 1.0 "${recipe[@]}"
ref=runs/cifar10-vgg16_bn-w1-e30
[ -d "$ref/evaluation" ] || $CK evaluate --checkpoint "$ref" "${data[@]}"
[ -d "$ref/analysis" ] || $CK analyze --checkpoint "$ref" "${data[@]}" --quiet

step runs/cifar10-vgg11_bn-w1-e30 train --dataset cifar10 "${data[@]}" --model vgg11_bn --width 1.0 "${recipe[@]}"

tune=(--finetune-epochs 30 --lr 0.01 --seed 0 "${data[@]}")
for ratio in 0.3 0.5 0.7; do
  step runs/vgg16-prune-l1-r$ratio prune --checkpoint "$ref" --ratio "$ratio" --importance l1 --round-to 8 "${tune[@]}"
  step runs/vgg16-prune-csi-l1-r$ratio prune --checkpoint "$ref" --ratio "$ratio" --importance l1 \
    --allocate csi --round-to 8 "${tune[@]}"
done
step runs/vgg16-prune-separation-r0.5 prune --checkpoint "$ref" --ratio 0.5 --importance separation --round-to 8 \
  "${tune[@]}"
step runs/vgg16-lowrank-e0.9 lowrank --checkpoint "$ref" --energy 0.9 "${tune[@]}"
step runs/vgg16-depth-g0.005 depth --checkpoint "$ref" --min-gain 0.005 "${tune[@]}"
step runs/vgg16-depth-prune-csi-l1-r0.7 prune --checkpoint runs/vgg16-depth-g0.005 --ratio 0.7 --importance l1 \
  --allocate csi --round-to 8 "${tune[@]}"

runs=("$ref" runs/vgg16-prune-*-r* runs/vgg16-lowrank-e0.9 runs/vgg16-depth-g0.005 runs/vgg16-depth-prune-csi-l1-r0.7)
$CK report "${runs[@]}" --out runs/vgg16-report --threads 2 --bench-seconds 3 --overwrite
