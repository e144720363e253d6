#!/usr/bin/env bash
# The test command (`make test` runs this after setup). Steps, in order; the first failure stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
export DCR_NB_ROOT="$PWD" PYTHONHASHSEED=0 MPLBACKEND=Agg
step() { echo; echo "==> $*"; }
snapshot() { find "$@" -type f \( -name '*.ipynb' -o -name '*.py' \) -not -path '*/.ipynb_checkpoints/*' -not -path '*/__pycache__/*' -print0 | sort -z | xargs -0 md5sum; }
unchanged() {  # unchanged "what" cmd... : run cmd, fail if it changed any notebook or module
  local what=$1; shift; local before after
  before=$(snapshot nbs dcr_nb); "$@" >/dev/null; after=$(snapshot nbs dcr_nb)
  if [[ "$before" != "$after" ]]; then
    echo "FAIL: $what changed these files (commit the result of running it):"
    diff <(echo "$before") <(echo "$after") | grep '^[<>]' | awk '{print "  " $3}' | sort -u
    exit 1
  fi
  echo "ok: $what leaves the notebooks and the package unchanged"
}

step "1/6 notebooks are clean (nbdev_clean)"
unchanged "nbdev_clean" bash -c 'nbdev_clean && nbdev_clean --fname nbs/stages'
step "2/6 exported code is in sync (nbdev_export)"
unchanged "nbdev_export" nbdev_export
step "3/6 library notebooks carry the outputs of their current code; README.md is what nbs/index.ipynb renders; stage notebooks: one parameters cell, no outputs, parameters match dvc.yaml"
python scripts/execute_nbs.py --check
python scripts/readme.py --check
python scripts/check_stages.py
step "4/6 nbdev_test (library notebooks)"
nbdev_test --n_workers 2 --timing
step "5/6 the real pipeline on the smoke profile: dvc repro from scratch, then the data and one chain rebuilt bit for bit; the ablations; the toy world twice"
bash scripts/smoke_pipeline.sh
step "6/6 pytest tests/"
python -m pytest tests/ -q -p no:cacheprovider --durations=12 ${FAST:+-m "not slow"}
