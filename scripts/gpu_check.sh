#!/usr/bin/env bash
# The prepared GPU check (issue 12 item 8, issue 14 item 6): at most 8 minutes on a bare single-GPU H100/H200
# machine with no package registry. It uses the machine's own torch and triton, installs the wheels that
# `make gpu-wheels` put in .whl/ (the transformers this checkout needs) into a private target, and runs
# bench/gpu_check.py, which writes gpu_check.{json,md,log} into the output directory.
#
#   scripts/gpu_check.sh [--out DIR] [--dry-run] [other bench/gpu_check.py arguments]
#     --out DIR   output directory (default: $OUT when set, else bench/results/gpu_check)
#     --dry-run   CPU, toy sizes, no wheels: the CPU-checkable parts (parsing, imports, configs, models, outputs)
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=0
out="${OUT:-bench/results/gpu_check}"
args=()
while (($#)); do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --dry-run) dry_run=1; args+=("$1"); shift ;;
    *) args+=("$1"); shift ;;
  esac
done

if ((dry_run)); then
  python="${PYTHON:-.venv/bin/python}"
  [[ -x "$python" ]] || python=python3
  exec "$python" -m bench.gpu_check --out "$out" "${args[@]}"
fi

python="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
  site=/tmp/sambay-gpu-site
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "gpu_check: no wheels in .whl/ (run 'make gpu-wheels' on a machine with a registry); using what is installed" >&2
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu_check: no CUDA device visible (use --dry-run on CPU)")'
# The steps' own limits add up to about 7 minutes; this is the hard stop of the whole check.
exec timeout 480 "$python" -m bench.gpu_check --out "$out" "${args[@]}"
