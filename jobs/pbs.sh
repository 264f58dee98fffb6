#!/bin/bash
# PBS Pro / Torque: qsub jobs/pbs.sh   (arguments through: qsub -v ARGS="--algo local --tau 8" jobs/pbs.sh)
#PBS -N mpisgd
#PBS -l select=1:ncpus=4:mpiprocs=4
#PBS -l walltime=01:00:00
#PBS -j oe
#PBS -r y
# Preemption or a time limit: PBS sends SIGTERM, each rank stops at the same step and writes a
# checkpoint (runs/<job id>.ckpt), mpisgd exits 3 and the script resubmits itself with RESUME
# set; the new job continues from the newest checkpoint into the same record.
# Resources: 4 ranks on 4 cores fit a small node; on a bigger one give each rank its share
# (qsub -l select=1:ncpus=32:mpiprocs=4): torch's threads per rank are NCPUS / ranks.
set -euo pipefail
cd "${PBS_O_WORKDIR:-.}"
mkdir -p runs
source .venv/bin/activate
NP=$(wc -l < "${PBS_NODEFILE}")
export OMP_NUM_THREADS=$(( ${NCPUS:-$NP} / NP > 0 ? ${NCPUS:-$NP} / NP : 1 ))
RUN="${RESUME:-runs/mpisgd-${PBS_JOBID%%.*}}"
resume=()
if [ -d "${RUN}.ckpt" ]; then resume=(--resume "${RUN}.ckpt"); fi
rc=0
# shellcheck disable=SC2086
mpiexec -n "${NP}" python -m mpisgd train --threads "${OMP_NUM_THREADS}" \
    --out "${RUN}.h5" --checkpoint-every "${CKPT_EVERY:-500}" "${resume[@]}" ${ARGS:-} || rc=$?
if [ "${rc}" -eq 3 ]; then
    qsub -v "ARGS=${ARGS:-},RESUME=${RUN},CKPT_EVERY=${CKPT_EVERY:-500}" "$0"
fi
exit "${rc}"
