#!/bin/bash
# One task per node of paper/slurm/paper.sbatch (srun --ntasks-per-node=1). Node 0 runs DVC, whose training stages
# start through `python -m dcr_nb.launch` and announce themselves in $DCR_NB_LAUNCH_DIR; every other node follows
# those announcements and starts its share of each, until node 0 writes `done` there.
set -u
# SIGTERM and SIGUSR1 end neither this script nor DVC: the launcher, the stage runner and the training turn them into
# a stop after the current update (exit status 75), and DVC then fails the stage without recording it.
trap '' TERM USR1
if [[ ${SLURM_NODEID:?} == 0 ]]; then
    dvc --cd paper repro; status=$?
    echo "$status" > "${DCR_NB_LAUNCH_DIR:?}/done"   # the other nodes stop following
    exit "$status"
fi
exec python -m dcr_nb.launch --follow "${DCR_NB_LAUNCH_DIR:?}"
