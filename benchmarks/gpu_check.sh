#!/usr/bin/env bash
# The prepared GPU check (see benchmarks/gpu_check.py): bash benchmarks/gpu_check.sh --out=DIR [options]
# Its dress rehearsal on the CPU: bash benchmarks/gpu_check.sh --out=DIR --dry-run
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
exec python -m benchmarks.gpu_check "$@"
