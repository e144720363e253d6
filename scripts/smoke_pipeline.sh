#!/usr/bin/env bash
# Run the real pipeline (every DVC stage, through papermill) on the smoke profile, in a scratch copy
# of the working tree, from scratch; then delete the data and one objective-seed chain and rebuild them:
# every output must be bit-identical. Plain `dvc status` / `metrics show` / `plots show` speak of the default
# pipeline only. Then the ablations (ablations/dvc.yaml, their own DVC project) at toy size. Then the world
# pipeline (world/dvc.yaml, what `make world` runs) at toy size, twice: identical weights and report, and
# `ship-world` + `check-world` work on what it built.
#   bash scripts/smoke_pipeline.sh [WORKDIR] [PROFILE]     (default: a temp dir, profiles/smoke.yaml)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-}; [[ -n "$WORK" ]] || { WORK=$(mktemp -d -t dcr-smoke.XXXXXX); CLEANUP=1; }
PROFILE=${2:-profiles/smoke.yaml}
export PATH="$ROOT/.venv/bin:$PATH" DCR_NB_ROOT="$WORK" MPLBACKEND=Agg PYTHONHASHSEED=0
bash "$ROOT/scripts/scratch_project.sh" "$WORK" "$PROFILE"
cd "$WORK"
# Every output file but the executed notebooks and the training logs (papermill and dvclive write timestamps there).
outputs() { find outputs -type f ! -name '*.ipynb' ! -path 'outputs/train/*' -print0 | sort -z | xargs -0 md5sum; }
rm -rf outputs
start=$(date +%s)
dvc repro --quiet --no-run-cache > repro.run1.log 2>&1 || { tail -40 repro.run1.log; echo "FAIL: dvc repro in $WORK"; exit 1; }
echo "smoke run: dvc repro from scratch took $(( $(date +%s) - start )) s ($(dvc stage list | wc -l) stages)"
dvc status --quiet dvc.yaml || { echo "FAIL: dvc status is not clean after repro"; exit 1; }
grep -q '"verdict"' outputs/figures/comparison.json || { echo "FAIL: comparison.json has no verdicts"; exit 1; }
# What a newcomer types after `make repro`: world/, ablations/ and paper/ are DVC projects of their own, never built in
# this copy, and the plain commands at the root must not list their missing outputs.
[[ "$(dvc status 2>&1)" == "Data and pipelines are up to date." ]] || { dvc status | head -20; echo "FAIL: plain dvc status is not clean after the default run"; exit 1; }
for cmd in "metrics show" "plots show -o dvc_plots"; do
  if dvc $cmd 2>&1 | grep -E 'world/|ablations/|paper/|WARNING|ERROR'; then echo "FAIL: dvc $cmd speaks of another pipeline than the default or warns"; exit 1; fi
done
[[ $(dvc metrics show 2>&1 | grep -c '^outputs/') -gt 0 ]] || { echo "FAIL: dvc metrics show lists no metrics of the default pipeline"; exit 1; }
echo "ok: dvc status, dvc metrics show and dvc plots show speak of the default pipeline only"
# Progress (nbs/00b_stage): every training stage showed its progress on the terminal (relayed by python -m dcr_nb.stage),
# no kernel warned about TCP without encryption, and the executed notebooks hold a few progress lines, not one per step.
n_train=$(ls -d outputs/stage1/* outputs/stage2/* | wc -l)
n_done=$(grep -cE '^\[stage[12]@[^]]+\] .*step ([0-9]+)/\1 \(100%\).* done in ' repro.run1.log || true)
[[ $n_done -eq $n_train ]] || { grep '^\[' repro.run1.log | head; echo "FAIL: $n_done of $n_train training stages showed their progress on the terminal"; exit 1; }
if grep -q 'without encryption' repro.run1.log; then echo "FAIL: a kernel warned about TCP without encryption"; exit 1; fi
python - <<'PY'
import glob, json, re, sys
counts = {p: sum(len(re.findall(r"step \d+/\d+ \(", "".join(o.get("text", "")))) for c in json.load(open(p))["cells"] for o in c.get("outputs", []))
          for p in glob.glob("outputs/stage[12]/*/train_dcr.ipynb")}
worst = max(counts, key=counts.get)
if not 1 <= counts[worst] <= 12: sys.exit(f"FAIL: {worst} holds {counts[worst]} progress lines (expected 1 to 12)")
print(f"ok: every training stage showed its progress on the terminal; its executed notebook holds at most {counts[worst]} progress lines")
PY
outputs > outputs.run1
# Reproducible from scratch: delete the data and one whole objective-seed chain (its checkpoints too) and force those
# four stages to run again (DVC would otherwise restore cached outputs); then let DVC bring the rest up to date. Every
# output must be bit-identical to the first run's.
CHAIN=$(python -c "import yaml; p = yaml.safe_load(open('params.yaml')); print(f\"{list(p['objectives'])[-1]}-{p['seeds'][-1]}\")")
rm -rf outputs/prepare outputs/stage1/$CHAIN outputs/stage2/$CHAIN outputs/train/stage1/$CHAIN outputs/train/stage2/$CHAIN outputs/evaluate/$CHAIN
start=$(date +%s)
dvc repro --force --single-item --no-run-cache prepare stage1@$CHAIN stage2@$CHAIN evaluate@$CHAIN > repro.run2.log 2>&1 &&
  dvc repro --no-run-cache >> repro.run2.log 2>&1 || { tail -40 repro.run2.log; echo "FAIL: dvc repro (rerun of prepare and $CHAIN) in $WORK"; exit 1; }
echo "smoke rerun of prepare and the $CHAIN chain from scratch: $(( $(date +%s) - start )) s ($(grep -c '^Running stage' repro.run2.log) stages)"
dvc status --quiet dvc.yaml || { echo "FAIL: dvc status is not clean after the rerun"; exit 1; }
outputs > outputs.run2
if ! diff outputs.run1 outputs.run2 >/dev/null; then echo "FAIL: outputs differ between two runs from scratch:"; diff outputs.run1 outputs.run2 | head; exit 1; fi
echo "ok: prepare and the $CHAIN chain rebuilt from scratch bit for bit ($(wc -l < outputs.run1) output files identical)"

# The ablations (ablations/dvc.yaml, claim 4) at toy size on top of that run: they must run, judge claim 4, and leave
# the default pipeline up to date (they read its outputs and must not write where its stages look).
cp "$ROOT/profiles/ablations_smoke.yaml" ablations/params.yaml
start=$(date +%s)
dvc --cd ablations repro --quiet --no-run-cache > ablations.log 2>&1 || { tail -40 ablations.log; echo "FAIL: dvc --cd ablations repro in $WORK"; exit 1; }
echo "smoke ablations: dvc --cd ablations repro took $(( $(date +%s) - start )) s ($(dvc --cd ablations stage list | wc -l) stages)"
dvc --cd ablations status --quiet && dvc status --quiet || { dvc status; dvc --cd ablations status; echo "FAIL: dvc status is not clean after the ablations"; exit 1; }
grep -q '"4_ablations"' ablations/outputs/comparison.json || { echo "FAIL: the ablations' comparison.json has no verdict on claim 4"; exit 1; }
echo "ok: the ablations ran, judged claim 4, and left the default pipeline up to date"

cp "$ROOT/profiles/world_smoke.yaml" world/params.yaml
built() { md5sum world/outputs/pretrain_clip/clip.safetensors world/outputs/pretrain_denoiser/unet/* world/outputs/pretrain_denoiser/scheduler/* world/outputs/report/report.json; }
for run in 1 2; do
  rm -rf world/outputs
  start=$(date +%s)
  dvc --cd world repro --quiet --no-run-cache > "world.run$run.log" 2>&1 || { tail -40 "world.run$run.log"; echo "FAIL: dvc --cd world repro (run $run) in $WORK"; exit 1; }
  echo "smoke world run $run: dvc --cd world repro took $(( $(date +%s) - start )) s"
  built > "world.run$run"
done
if ! diff world.run1 world.run2 >/dev/null; then echo "FAIL: the world differs between two builds from scratch:"; diff world.run1 world.run2; exit 1; fi
python -m dcr_nb.pipeline ship-world > /dev/null && python -m dcr_nb.pipeline check-world || { echo "FAIL: shipping the toy world"; exit 1; }
echo "ok: two toy worlds from scratch are identical ($(wc -l < world.run1) files), shipped and checked against world/dvc.lock"
if [[ -n "${CLEANUP:-}" ]]; then rm -rf "$WORK"; else echo "outputs kept in $WORK"; fi
