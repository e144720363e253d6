#!/usr/bin/env bash
# A scratch copy of this working tree in which the real pipeline can run: every file git tracks or
# would track, data/ hard-linked, a profile as its params.yaml, and a git repository of its own (DVC
# hashes and locks the copy, never this checkout).
#   bash scripts/scratch_project.sh WORKDIR [PROFILE]     (default profile: profiles/smoke.yaml)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:?usage: scratch_project.sh WORKDIR [PROFILE]}; PROFILE=${2:-profiles/smoke.yaml}
[[ -d "$ROOT/data" ]] || { echo "no data/ in $ROOT: run 'make setup' first" >&2; exit 1; }
mkdir -p "$WORK"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) | tar -xf - -C "$WORK"
cp -rl "$ROOT/data" "$WORK/data" 2>/dev/null || cp -r "$ROOT/data" "$WORK/data"
cp "$ROOT/$PROFILE" "$WORK/params.yaml"
cd "$WORK"
git init -q && git add -A >/dev/null && git -c user.name=scratch -c user.email=scratch@localhost commit -qm scratch
