#!/bin/bash
# Submit a whole pipeline to Slurm: one job per pending stage, chained with --dependency=afterok, then a last
# one-process job that runs the pipeline driver (which finds every stage done and writes the report).
#
#   slurm/submit.sh [--nodes=N] [--gpus-per-node=G] [other sbatch options] -- [pipeline overrides]
#   slurm/submit.sh --nodes=4 --gpus-per-node=8 --time=24:00:00 -- --config-name=demo nproc_per_node=8
#
# sbatch options apply to the training/eval stages; `launcher: python` stages (data preparation) and the
# report job run on one node (with --cpus-per-task, if given, for the python stages too). Job logs: <run_dir>/slurm/<stage>-<jobid>.out
set -euo pipefail
cd "$(dirname "$0")/.."
SBATCH_OPTS=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do SBATCH_OPTS+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
PY=${SAMBAY_VENV:-.venv}/bin/python

RUN_DIR=$($PY scripts/pipeline.py "$@" --cfg job --resolve | awk '/^run_dir:/{print $2}')
mkdir -p "$RUN_DIR/slurm"
PLAN=$($PY scripts/pipeline.py "$@" plan=true)   # fails loudly on a bad recipe, before anything is submitted
DEP=()
while read -r STAGE NPROC LAUNCHER ARGS_FILE; do
  [ -n "$STAGE" ] || continue
  OPTS=("${SBATCH_OPTS[@]}")
  if [ "$LAUNCHER" = python ]; then
    OPTS=(--nodes=1)  # CPUs per task still apply: stage.sbatch asks for its own default otherwise
    for o in "${SBATCH_OPTS[@]}"; do case "$o" in --cpus-per-task=*) OPTS+=("$o") ;; esac; done
  fi
  JOB=$(sbatch --parsable "${DEP[@]}" "${OPTS[@]}" --job-name="sambay-$STAGE" \
        --output="$RUN_DIR/slurm/$STAGE-%j.out" \
        --export="ALL,NPROC_PER_NODE=$NPROC,LAUNCHER=$LAUNCHER" slurm/stage.sbatch "$ARGS_FILE")
  echo "submitted $STAGE as job $JOB"
  DEP=(--dependency="afterok:$JOB")
done <<< "$PLAN"
JOB=$(sbatch --parsable "${DEP[@]}" --nodes=1 --ntasks=1 --job-name=sambay-report \
      --output="$RUN_DIR/slurm/report-%j.out" \
      --wrap="$PY scripts/pipeline.py $(printf '%q ' "$@")")
echo "submitted the report as job $JOB; report: $RUN_DIR/report.md"
