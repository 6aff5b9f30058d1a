# gpt2_tf: every target sets itself up (virtual environment in .venv, editable install).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?= -n 2

.PHONY: install test lint format demo bench gpu-check app clean score-chat weight-diff analyze-dictionary staged-text
# prep-<task>, train-<task>, test-<task>, export-<task>, eval-<task> are pattern rules below
# (make skips those for .PHONY names): <task> is a task's alias or name, resolved by the runner
# (python -m pipelines <verb> <task>), so a new task (one file in gpt2_tf/data/tasks/) needs
# no line here.

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check gpt2_tf pipelines tests benchmarks
	$(BIN)/ruff format --check gpt2_tf pipelines tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format gpt2_tf pipelines tests benchmarks
	$(BIN)/ruff check --fix gpt2_tf pipelines tests benchmarks

# The main job on the embedded default (offline: bundled sample, small model).
# MODEL=gpt2 (online) or MODEL=<folder> fine-tunes real GPT-2 instead of the tiny random one.
demo: $(STAMP)
	$(BIN)/python -m pipelines.demo $(if $(filter command line environment,$(origin MODEL)),--init_from=$(MODEL))

# ---- the browser page: make app [MODEL=runs/<task>/final | exports/<task>[/N]] [PORT=8501] ----
# (MODEL counts here only when given: its default, tiny, is the training preset.)
PORT ?= 8501
APP_MODEL = $(if $(filter command line environment,$(origin MODEL)),$(MODEL),runs/instruction_tuning/final)

app: $(STAMP)
	$(BIN)/streamlit run gpt2_tf/serve/app.py --server.address=127.0.0.1 --server.port=$(PORT) \
	  --server.headless=true --browser.gatherUsageStats=false --client.toolbarMode=minimal \
	  -- --model=$(APP_MODEL)

# gpt2_tf against Hugging Face transformers and keras-hub (GPT-2 124M shape); under 15 minutes.
# Writes benchmarks/results/bench.{md,json}. BENCH_ARGS=--quick for a tiny-model smoke run.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m benchmarks.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache

# ---- dataset prep: make prep-<task> [INPUT=path] [TOKENIZER=folder] [OUT=folder] --------------
# INPUT is the task's input flag (--input_dir for rte, --chat_file for chat, ...: the runner's
# --input names it). With no input path a prep reads the hub (online), or for Dolly the bundled
# sample (offline). On this project's machines the shared data folder is the default where it
# exists: INPUT_<task>, under the older names the README gives (RTE_DIR=..., CHAT_FILE=...).
SHARED         := ../shared/data
EMOTION_DIR      ?= $(wildcard $(SHARED)/emotion)
RTE_DIR          ?= $(wildcard $(SHARED)/glue_rte)
WIKTIONARY_JSONL ?= $(wildcard $(SHARED)/wiktionary/flat_senses.jsonl)
CHAT_FILE        ?= $(wildcard $(SHARED)/chat_dialogs/dialogs.txt)
TEXT_FILES       ?= $(wildcard $(SHARED)/chinese_poetry)
INPUT_dolly      = $(DOLLY_JSONL)
INPUT_emotion    = $(EMOTION_DIR)
INPUT_rte        = $(RTE_DIR)
INPUT_dictionary = $(WIKTIONARY_JSONL)
INPUT_chat       = $(CHAT_FILE)
INPUT_text       = $(TEXT_FILES)
prep_input = $(or $(INPUT),$(INPUT_$*))
PREP_FLAGS = $(if $(prep_input),--input=$(prep_input)) \
             $(if $(TOKENIZER),--tokenizer=$(TOKENIZER)) $(if $(OUT),--output_dir=$(OUT)) \
             $(if $(OVERWRITE),--overwrite) $(PREP_ARGS)

prep-%: $(STAMP)
	$(BIN)/python -m pipelines prep $* $(PREP_FLAGS)

# ---- training: make train-<task> [MODEL=tiny|124M|gpt2|/path/to/folder] [DATA=..] [RUN=..] ----
# MODEL is --init_from: a preset trains from random weights; a folder or hub id fine-tunes it.
# Rerunning the same command resumes from runs/<task>/checkpoints; pick another RUN= to start anew.
# The task's own defaults (e.g. LoRA for rte) are its TaskSpec's train_defaults.
MODEL ?= tiny
TRAIN_FLAGS = --init_from=$(MODEL) $(if $(DATA),--data_dir=$(DATA)) $(if $(RUN),--output_dir=$(RUN)) \
              $(TRAIN_ARGS)

train-%: $(STAMP)
	$(BIN)/python -m pipelines train $* $(TRAIN_FLAGS)

# ---- running and exporting a trained model: make test-<task> PROMPT="..." / make export-<task> --
# RUN is the training output folder (default runs/<task>); its final/ model is used.
PROMPT ?=
INPUT_FILE ?=
model_dir = $(if $(RUN),--model_dir=$(RUN)/final)
TEST_FLAGS = $(model_dir) $(if $(PROMPT),--prompt="$(PROMPT)") $(if $(INPUT_FILE),--input_file=$(INPUT_FILE)) $(TEST_ARGS)
EXPORT_FLAGS = $(model_dir) $(if $(EXPORT_DIR),--export_dir=$(EXPORT_DIR)) $(EXPORT_ARGS)

test-%: $(STAMP)
	$(BIN)/python -m pipelines test $* $(TEST_FLAGS)

export-%: $(STAMP)
	$(BIN)/python -m pipelines export $* $(EXPORT_FLAGS)

# ---- analyses: results go to <run>/analysis/ (RUN = the training output folder) ----
score-chat: $(STAMP)
	$(BIN)/python -m pipelines score chat $(model_dir) \
	  $(if $(INPUT_FILE),--input_file=$(INPUT_FILE)) $(SCORE_ARGS)

weight-diff: $(STAMP)
	$(BIN)/python -m pipelines.weight_diff --a=$(A) --b=$(B) $(WEIGHT_DIFF_ARGS)

analyze-dictionary: $(STAMP)
	$(BIN)/python -m pipelines analyze dictionary $(model_dir) \
	  $(if $(DATA),--data_dir=$(DATA)) $(ANALYZE_ARGS)

# ---- evaluation: make eval-<task> [RUN=runs/<task>] [DATA=..] [EVAL_ARGS="--num_generations=50"] --
# Metrics (JSON, CSV), plots (PNG) and report.md in <run>/eval, the base model (the run's
# --init_from) beside the fine-tuned one. RUN defaults to runs/<task>; its final/ model is used.
EVAL_FLAGS = $(model_dir) $(if $(DATA),--data_dir=$(DATA)) $(EVAL_ARGS)

eval-%: $(STAMP)
	$(BIN)/python -m pipelines evaluate $* $(EVAL_FLAGS)

# ---- staged fine-tuning: make prep-text PREP_ARGS=--num_stages=3, then make staged-text --------
# Trains stage 1..N in turn (each from the last one's weights) into RUN (default
# runs/text_tuning_staged)/stage{k}, evaluating after each; results in RUN/eval.
staged-text: $(STAMP)
	$(BIN)/python -m pipelines staged text $(TRAIN_FLAGS) $(STAGED_ARGS)

# ---- make gpu-check: the tests, a mirrored run, 124M throughput and MFU, generation and an
# export on this machine's GPUs, as one table (benchmarks/gpu_check.py; under 10 minutes).
# TensorFlow's CUDA libraries come with the gpu extra, installed where nvidia-smi exists; with
# no GPU visible it says so and exits 0.
gpu-check: $(STAMP)
	if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/python -m pip install --quiet -e '.[gpu]'; fi
	$(BIN)/python -m benchmarks.gpu_check $(GPU_CHECK_ARGS)
