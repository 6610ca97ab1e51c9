#!/usr/bin/env bash
# The full-width plan as one resumable command: see experiments/full_scale.py for what each call does
# (skip what is committed under results/full-scale/, resume what stopped, record CPU and wall time per step).
# Usage: bash experiments/full_scale_runs.sh [DATA_DIR] [--only NAME ...] [--list]
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=data
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then data_dir=$1; shift; fi
exec .venv/bin/python experiments/full_scale.py --data-dir "$data_dir" "$@"
