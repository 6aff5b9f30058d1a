"""Running a trained model on new inputs: the `pipelines/<task>/test.py` behind `make test-<task>`.

A trained folder (`runs/<task>/final`) holds the weights, the tokenizer and `task.json`; each
input (a dict of fields, e.g. {"instruction": ...} or {"text": ...}) becomes the model's ids by
the task's own `prompt`, exactly as in prep.
"""

from __future__ import annotations

import json
import os

import numpy as np

from gpt2_tf.export import TASK_FILE
from gpt2_tf.generation import generate
from gpt2_tf.tasks import EncodeContext, get_task


def load_trained(model_dir: str):
    """(model, tokenizer, task info) from a folder written by training."""
    from gpt2_tf.model import GPT2Classifier, GPT2LanguageModel
    from gpt2_tf.tokenizer import GPT2Tokenizer

    path = os.path.join(model_dir, TASK_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{model_dir}: no {TASK_FILE}; pass a folder written by training "
            "(runs/<task>/final or best)"
        )
    with open(path, encoding="utf-8") as f:
        task = json.load(f)
    cls = GPT2Classifier if task["kind"] == "classifier" else GPT2LanguageModel
    return cls.from_pretrained(model_dir), GPT2Tokenizer.from_pretrained(model_dir), task


def read_inputs(prompts=(), input_file: str | None = None) -> list[dict]:
    """Command-line prompts and a file: JSONL (one dict of fields a line) or plain text lines."""
    inputs = [{"text": p} for p in prompts]
    if input_file:
        with open(input_file, encoding="utf-8") as f:
            lines = [line.rstrip("\n") for line in f if line.strip()]
        jsonl = input_file.endswith(".jsonl")
        inputs += [json.loads(line) if jsonl else {"text": line} for line in lines]
    if not inputs:
        raise ValueError("no inputs: pass --prompt (repeatable) or --input_file")
    return inputs


def predict(model, tokenizer, task: dict, inputs: list[dict], **generation) -> list[dict]:
    """Generations (LM tasks) or labels with probabilities (classifiers), one dict per input."""
    spec = get_task(task["task"])
    ctx = EncodeContext(tokenizer, task["seq_len"], {})
    ids = [spec.prompt(fields, ctx) for fields in inputs]
    if task["kind"] != "classifier":
        new = generate(model, ids, stop_token_ids=(tokenizer.eos_id,), **generation)
        return [
            {
                "prompt": tokenizer.decode(p),
                "output": tokenizer.decode([t for t in n if t != tokenizer.eos_id]),
            }
            for p, n in zip(ids, new)
        ]
    width = max(map(len, ids))
    token_ids = np.array([row + [tokenizer.eos_id] * (width - len(row)) for row in ids], np.int32)
    mask = np.array([[1] * len(row) + [0] * (width - len(row)) for row in ids], np.int32)
    probs = _softmax(np.asarray(model({"token_ids": token_ids, "padding_mask": mask})))
    names = task["label_names"]
    return [
        {"label": names[int(p.argmax())], "probabilities": dict(zip(names, p.round(4).tolist()))}
        for p in probs
    ]


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
