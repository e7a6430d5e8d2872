#!/usr/bin/env bash
# The prepared GPU check (issue 12 item 8, issue 14 item 6, issue 20 items 1 and 7): at most 8 minutes on a bare
# single-GPU H100/H200 machine with no package registry. It keeps the machine's own torch and triton, installs the
# wheels that `make gpu-wheels` put in .whl/ (deepspeed, trl, datasets, hydra-core, transformers, ...: what such an
# image lacks) into a private target with --no-index --no-deps, and runs bench/gpu_check.py: the environment,
# kernel and attention checks first, then the real entry points (data.prepare, train.pretrain / sft / dpo under
# torchrun); it writes gpu_check.{json,md,log} and gpu_check_recompiles.log into the output directory.
#
#   scripts/gpu_check.sh [--out DIR] [--dry-run] [other bench/gpu_check.py arguments]
#     --out DIR   output directory (default: $OUT when set, else bench/results)
#     --dry-run   CPU, toy sizes, this checkout's .venv, no wheels: every part through the same code paths
#                 (writes gpu_check_dryrun.{json,md,log})
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=0
for arg in "$@"; do [[ "$arg" == --dry-run ]] && dry_run=1; done
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
  WANDB_MODE=disabled

if ((dry_run)); then
  python="${PYTHON:-.venv/bin/python}"
  [[ -x "$python" ]] || python=python3
  exec "$python" -m bench.gpu_check "$@"
fi

budget_s=480  # the whole check, wheel install included
python="${PYTHON:-python3}"
wheels="${GPU_WHEELS_DIR:-.whl}"
if compgen -G "$wheels/*.whl" >/dev/null; then
  # The image's torch / triton / CUDA libraries are the ones to test: never shadow them.
  if compgen -G "$wheels/torch-*.whl" >/dev/null || compgen -G "$wheels/triton-*.whl" >/dev/null \
     || compgen -G "$wheels/nvidia_*.whl" >/dev/null; then
    echo "gpu_check: $wheels holds torch/triton/nvidia wheels; the GPU image's own must be used" >&2
    exit 2
  fi
  site=/tmp/sambay-gpu-site
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "$wheels"/*.whl
  # SAMBAY_GPU_SITE: the env part checks the requirements of what is installed there against the image.
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" SAMBAY_GPU_SITE="$site"
  echo "gpu_check: installed $(ls "$wheels"/*.whl | wc -l) wheels from $wheels into $site in ${SECONDS} s"
else
  echo "gpu_check: no wheels in $wheels/ (run 'make gpu-wheels' where a registry is reachable); using what is" \
    "installed" >&2
fi
"$python" -c 'import torch, sys
sys.exit(0 if torch.cuda.is_available() else "gpu_check: no CUDA device visible (use --dry-run on CPU)")'
# Each part has its own limit inside bench/gpu_check.py; this is the hard stop of the whole check.
exec timeout --signal=TERM --kill-after=10 $((budget_s - SECONDS)) "$python" -m bench.gpu_check "$@"
