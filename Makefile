# dcr-nb: two commands for a newcomer — `make repro` (the pipeline) and `make test` (all tests).
# Both set everything up first; setup is idempotent and takes a second when already done.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dcr-nb-installed
export PATH := $(abspath $(BIN)):$(PATH)
export DCR_NB_ROOT := $(abspath .)

.PHONY: setup data chromium notebooks readme repro results test lab clean-outputs paper paper-inputs world studies gpu-check ablations
.DEFAULT_GOAL := repro

# The virtual environment with every pinned dependency and the package itself (editable).
$(STAMP): constraints.txt setup.py settings.ini
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]' 2>&1 \
	  | { grep -v -e 'is ignored: it is neither a file nor a directory' -e '^\s*$$' || true; }
	@touch $@

# Raw Fashion-MNIST under data/, verified against its MD5s (tracked by data.dvc).
data: $(STAMP)
	@$(BIN)/python -m dcr_nb.fetch

# Chromium for tests/test_lab.py (a headless browser checks that JupyterLab renders a notebook's images and math):
# nothing when `chromium` is on PATH; as root, apt-get installs it (about 10 s, 400 MB); otherwise it says what to install
# (and `make repro` goes on without it; `make test` fails in tests/test_lab.py).
chromium:
	@bash scripts/ensure_chromium.sh || echo "(without chromium, make test fails in tests/test_lab.py; make repro does not need it)"

setup: $(STAMP) data chromium

repro: setup
	dvc repro
	@echo; sed -n '/^### Verdicts/,/^### Metrics/p' outputs/figures/summary.md | sed '$$d'; echo "(all tables: outputs/figures/summary.md; figures: outputs/figures/*.png)"

# Publish the last run's verdicts, tables and figures to docs/ (tracked by git), and render the README from them.
# tests/test_results.py checks that the copies are the outputs dvc.lock records.
results:
	cp outputs/figures/summary.md docs/results.md
	cp outputs/figures/pd_plane.png outputs/figures/mmvp_per_category.png outputs/figures/grad_cosines.png outputs/figures/tsne.png docs/
	@if [[ -f ablations/outputs/summary.md ]]; then set -x; cp ablations/outputs/summary.md docs/ablations.md; \
	  cp ablations/outputs/pd_plane.png docs/ablations_pd_plane.png; cp ablations/outputs/mmvp_per_category.png docs/ablations_mmvp_per_category.png; fi
	$(MAKE) readme

# The paper's ablations (claim 4: one end-to-end stage; other conditioning tokens than the class token), beside the
# default run: ablations/dvc.yaml, parameters in ablations/params.yaml (the rest from params.yaml). 28 minutes measured
# on 2 CPU cores; it reuses the default run's dcr and baseline evaluations (so it brings the default pipeline up to
# date first). ablations/ is a DVC project of its own (plain `dvc status` at the root speaks of the default pipeline
# only): `dvc --cd ablations status` asks about it. Prints the verdict on claim 4.
ablations: setup
	dvc repro
	dvc --cd ablations repro
	@echo; sed -n '/^### Claim 4/,/^Runs:/p' ablations/outputs/summary.md; echo "(all tables: ablations/outputs/summary.md; figures: ablations/outputs/*.png)"

test: setup
	bash scripts/test.sh

# The default world's stand-ins, pretrained once (world/dvc.yaml; parameters in world/params.yaml; 98-130 minutes on
# 2 CPU cores) and shipped: the weights and the report are copied to world/ (tracked by git), checked against
# world/dvc.lock. `make repro` never runs this; it starts from the shipped world. world/ is a DVC project of its own:
# `dvc --cd world status` asks about it.
world: setup
	dvc --cd world repro
	$(BIN)/python -m dcr_nb.pipeline ship-world

# The world studies (studies/dvc.yaml; settings in studies/params.yaml): what was measured about the shipped world to find
# the levers for its short rows, one stage per study (`dvc --cd studies repro <study>` runs one). Each writes its tables to
# studies/outputs/<study>/ (tracked by git), which nbs/08a_world.ipynb shows. class, levers and slot read the world's prepared
# scenes (made here when missing: `dvc --cd world repro prepare`, 30 s). studies/ is a DVC project of its own:
# `dvc --cd studies status` asks about it.
studies: setup
	@test -f world/outputs/prepare/scenes.npz || dvc --cd world repro prepare
	dvc --cd studies repro

# The paper profile's inputs, fetched by name on a machine with network (nbs/09b_paper_fetch.ipynb): the open_clip weights,
# Stable Diffusion 2.1-base, MMVP-VLM, the CIFAR-10 test set and CC3M, into the paths paper/params.yaml gives under `inputs:`;
# resumable (a rerun keeps what is complete and verified, and continues partial downloads), then the preflight of `make paper`.
# CC3M needs Google's training TSV (its download needs a Google sign-in): CC3M_TSV=/path/to/Train_GCC-training.tsv, and
# CC3M_LIMIT=10000 for a first shard; img2dataset runs from an environment of its own (the fetcher says how to make it).
# ONLY=sd,mmvp fetches some inputs only (clip, sd, mmvp, cifar10, cc3m).
paper-inputs: $(STAMP)
	$(BIN)/python -m dcr_nb.paper_fetch paper/params.yaml $(if $(ONLY),--only $(ONLY)) $(if $(CC3M_TSV),--cc3m-tsv '$(CC3M_TSV)') $(if $(CC3M_LIMIT),--cc3m-limit $(CC3M_LIMIT))

# The paper profile on a GPU node (nbs/09_paper.ipynb; parameters in paper/params.yaml): first checks that every
# input (CLIP weights, Stable Diffusion 2.1-base folder, CC3M shards, MMVP-VLM) is here and stops with a list of what
# is missing, then runs paper/dvc.yaml (paper/ is a DVC project of its own: `dvc --cd paper status` asks about it).
paper: $(STAMP)
	$(BIN)/python -m dcr_nb.paper preflight paper/params.yaml
	dvc --cd paper repro

# One prepared check of the paper profile at real size on a CUDA machine (benchmarks/gpu_check.py; under 5 minutes): step time
# and peak memory of the straightforward step and of ours per setting, the projected wall time and the `dcr:` keys to use.
# Without a GPU it exits 2; `$(BIN)/python benchmarks/gpu_check.py --tiny` runs the same code on the CPU with tiny shapes.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py

# Execute every library notebook in place with the current code, so that it shows its results (figures, tables, checks),
# then nbdev_clean; prints the time each took and the notebooks' size. `make test` fails while a notebook's outputs are
# stale (scripts/execute_nbs.py --check: a hash of its code cells and of the dcr_nb modules it uses, recorded at execution).
notebooks: setup
	$(BIN)/python scripts/execute_nbs.py
	nbdev_clean

# README.md is generated: execute nbs/index.ipynb (its tables are read from docs/ and the dvc.yaml files), then render it
# (scripts/readme.py, in place of nbdev_readme, which needs Quarto). `make test` fails while README.md differs from it.
readme: $(STAMP)
	$(BIN)/python scripts/execute_nbs.py nbs/index.ipynb
	nbdev_clean --fname nbs/index.ipynb
	$(BIN)/python scripts/readme.py

# JupyterLab on the notebooks (works as root too).
lab: setup
	jupyter lab --allow-root --ip=127.0.0.1 --no-browser nbs/

clean-outputs:
	rm -rf outputs
