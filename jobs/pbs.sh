#!/bin/bash
# PBS Pro / Torque: qsub jobs/pbs.sh   (arguments through: qsub -v ARGS="--algo local --tau 8" jobs/pbs.sh)
#PBS -N mpisgd
#PBS -l select=1:ncpus=32:mpiprocs=4
#PBS -l walltime=01:00:00
#PBS -j oe
set -euo pipefail
cd "${PBS_O_WORKDIR:-.}"
mkdir -p runs
source .venv/bin/activate
NP=$(wc -l < "${PBS_NODEFILE}")
export OMP_NUM_THREADS=8
# shellcheck disable=SC2086
mpiexec -n "${NP}" python -m mpisgd train --threads "${OMP_NUM_THREADS}" \
    --out "runs/mpisgd-${PBS_JOBID%%.*}.h5" ${ARGS:-}
