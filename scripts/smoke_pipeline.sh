#!/usr/bin/env bash
# Run the real pipeline (every DVC stage, through papermill) on the smoke profile, in a scratch copy
# of the working tree, twice from scratch, and check that both runs give identical metrics. Then the
# world pipeline (world/dvc.yaml, what `make world` runs) at toy size, twice: identical weights and
# report, and `ship-world` + `check-world` work on what it built.
#   bash scripts/smoke_pipeline.sh [WORKDIR] [PROFILE]     (default: a temp dir, profiles/smoke.yaml)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-}; [[ -n "$WORK" ]] || { WORK=$(mktemp -d -t dcr-smoke.XXXXXX); CLEANUP=1; }
PROFILE=${2:-profiles/smoke.yaml}
export PATH="$ROOT/.venv/bin:$PATH" DCR_NB_ROOT="$WORK" MPLBACKEND=Agg PYTHONHASHSEED=0
bash "$ROOT/scripts/scratch_project.sh" "$WORK" "$PROFILE"
cd "$WORK"
metrics() { find outputs -name 'metrics.json' -o -name 'report.json' -o -name 'conflict.json' -o -name 'comparison.json' -o -name 'train_summary.json' | sort | xargs md5sum; }
for run in 1 2; do
  rm -rf outputs
  start=$(date +%s)
  dvc repro --quiet --no-run-cache > "repro.run$run.log" 2>&1 || { tail -40 "repro.run$run.log"; echo "FAIL: dvc repro (run $run) in $WORK"; exit 1; }
  echo "smoke run $run: dvc repro took $(( $(date +%s) - start )) s"
  metrics > "metrics.run$run"
done
dvc status --quiet dvc.yaml || { echo "FAIL: dvc status is not clean after repro"; exit 1; }
if ! diff metrics.run1 metrics.run2 >/dev/null; then echo "FAIL: metrics differ between two runs from scratch:"; diff metrics.run1 metrics.run2; exit 1; fi
echo "ok: $(wc -l < metrics.run1) metrics files identical across two runs from scratch"

cp "$ROOT/profiles/world_smoke.yaml" world/params.yaml
built() { md5sum outputs/world/pretrain_clip/clip.safetensors outputs/world/pretrain_denoiser/unet/* outputs/world/pretrain_denoiser/scheduler/* outputs/world/report/report.json; }
for run in 1 2; do
  rm -rf outputs/world
  start=$(date +%s)
  dvc repro --quiet --no-run-cache world/dvc.yaml > "world.run$run.log" 2>&1 || { tail -40 "world.run$run.log"; echo "FAIL: dvc repro world/dvc.yaml (run $run) in $WORK"; exit 1; }
  echo "smoke world run $run: dvc repro world/dvc.yaml took $(( $(date +%s) - start )) s"
  built > "world.run$run"
done
if ! diff world.run1 world.run2 >/dev/null; then echo "FAIL: the world differs between two builds from scratch:"; diff world.run1 world.run2; exit 1; fi
python -m dcr_nb.pipeline ship-world > /dev/null && python -m dcr_nb.pipeline check-world || { echo "FAIL: shipping the toy world"; exit 1; }
echo "ok: two toy worlds from scratch are identical ($(wc -l < world.run1) files), shipped and checked against world/dvc.lock"
if [[ -n "${CLEANUP:-}" ]]; then rm -rf "$WORK"; else echo "outputs kept in $WORK"; fi
