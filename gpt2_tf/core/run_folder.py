"""A training run's output folder: what it was started with, whether a new command may resume
it, and what starting afresh removes.

A rerun of the same command continues from the last checkpoint. A rerun whose run-defining
settings differ (another batch size, data, learning rate, ...) would continue a different run
under the old one's name, so it is refused with the differences listed; `--restart` clears the
run's outputs and starts at step 0 instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import tensorflow as tf

# A run folder's entries (`runs/<task>/...`), named once.
TRAIN_CONFIG = "train_config.json"  # the settings it was started with
FLAGS_FILE = "flags.txt"  # the command's flags: `--flagfile` reruns (resumes) it
CHECKPOINTS = "checkpoints"  # resumable training state, `ckpt-<step>`
BEST = "best"  # the model at the best validation score (a from_pretrained folder)
FINAL = "final"  # the model when training ended (a from_pretrained folder)
LORA = "lora"  # LoRA runs: the adapters alone, in LORA_ADAPTERS
LORA_ADAPTERS = "adapters.safetensors"
TENSORBOARD = "tensorboard"  # events under TENSORBOARD/train and TENSORBOARD/validation
METRICS_CSV = "metrics.csv"  # a row per logged step or evaluation
RESULT = "result.json"  # written last: the run finished
EVAL = "eval"  # `make eval-<task>` (and a staged run's evaluation) writes here
ANALYSIS = "analysis"  # the pipelines' analyses: ANALYSIS/<analysis>/
REPORT = "report.md"  # in an evaluation's or analysis's folder: what a person reads
TASK_FILE = "task.json"  # beside a trained model: kind, labels, seq_len, template
# beside an export's saved_model.pb: {"task": {...}, "eos_id": ...}
EXPORT_EXTRA = "assets.extra.json"
# The settings that change what a step computes or which examples it sees.
RUN_DEFINING = (
    "data_dir",
    "stage",
    "init_from",
    "seed",
    "packing",
    "batch_size",
    "grad_accum_steps",
    "epochs",
    "max_steps",
    "learning_rate",
    "warmup_steps",
    "schedule",
    "weight_decay",
    "clipnorm",
    "dropout",
    "precision",
    "lora_rank",
    "lora_alpha",
    "lora_targets",
    "pooling",
)
# What a run writes (and `--restart` removes); anything else in the folder stays.
RUN_OUTPUTS = (
    CHECKPOINTS,
    BEST,
    FINAL,
    LORA,
    TENSORBOARD,
    METRICS_CSV,
    RESULT,
    FLAGS_FILE,
    TRAIN_CONFIG,
)


class IncompatibleResume(ValueError):
    """The folder holds a run started with other run-defining settings."""


def checkpoint_step(checkpoint_dir: str) -> int | None:
    """The step of the latest checkpoint (saved as `ckpt-<step>`), or None."""
    path = tf.train.latest_checkpoint(checkpoint_dir)
    match = re.search(r"ckpt-(\d+)$", path or "")
    return int(match.group(1)) if match else None


def read_config(folder: str) -> dict:
    path = os.path.join(folder, TRAIN_CONFIG)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _comparable(name: str, value):
    if name == "data_dir" and isinstance(value, str):
        return os.path.abspath(value)
    return json.loads(json.dumps(value))  # tuples as lists, as the JSON file holds them


def check_resumable(folder: str, config: dict, checkpoint_dir: str) -> None:
    """Refuses to resume the run in `folder` with `config` if a run-defining setting differs
    from the one it was started with (settings its train_config.json lacks are not compared),
    or if nothing says what it was started with."""
    saved = read_config(folder)
    if not saved:
        raise IncompatibleResume(
            f"{checkpoint_dir} holds a checkpoint, but {folder} has no {TRAIN_CONFIG} saying "
            "which run it belongs to; pass --restart to start afresh, or choose another "
            "--output_dir"
        )
    changed = [
        f"--{k}: {saved[k]!r} when started, {config[k]!r} now"
        for k in RUN_DEFINING
        if k in saved and _comparable(k, saved[k]) != _comparable(k, config[k])
    ]
    if changed:
        raise IncompatibleResume(
            f"{folder} holds a run started with other settings, which this command would "
            "continue under its name:\n  " + "\n  ".join(changed) + "\nRerun with the "
            "settings it was started with to resume it, pass --restart to start it afresh "
            "(its checkpoints and logs are removed), or choose another --output_dir."
        )


LOGS = (METRICS_CSV, TENSORBOARD)  # what a killed attempt with no checkpoint leaves


def clear(folder: str, names=RUN_OUTPUTS) -> list[str]:
    """Removes the run's outputs (or `names` of them) from `folder`; returns what was removed."""
    removed = []
    for name in names:
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
        else:
            continue
        removed.append(name)
    return removed


def has_logs(folder: str) -> bool:
    return any(os.path.exists(os.path.join(folder, n)) for n in LOGS)
