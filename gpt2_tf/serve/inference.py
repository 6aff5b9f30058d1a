"""Running a trained model on new inputs: the `pipelines/<task>/test.py` behind `make test-<task>`.

A trained folder (`runs/<task>/final`) holds the weights, the tokenizer and `task.json`; each
input (a dict of fields, e.g. {"instruction": ...} or {"text": ...}) becomes the model's ids by
the task's own `prompt`, exactly as in prep.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from gpt2_tf.core.run_folder import TASK_FILE
from gpt2_tf.data.buckets import bucket_lengths, bucket_plan
from gpt2_tf.data.readers import RowError, iter_jsonl, iter_lines
from gpt2_tf.data.tasks import EncodeContext, get_task
from gpt2_tf.model.generation import generate, prompt_room


def load_trained(model_dir: str):
    """(model, tokenizer, task info) from a folder written by training."""
    from gpt2_tf.model.gpt2 import GPT2Classifier, GPT2LanguageModel
    from gpt2_tf.tokenizer.bpe import GPT2Tokenizer

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


@dataclasses.dataclass
class Input:
    """One input's fields (e.g. {"instruction": ...} or {"text": ...}) and where it came from,
    for an error that names it: "--prompt 2" or "<file>: line 3"."""

    fields: dict
    where: str


def read_inputs(prompts=(), input_file: str | None = None) -> list[Input]:
    """Command-line prompts and a file: JSONL (one object of fields a line) or plain text lines.
    A line that is not UTF-8, or not a JSON object, is an error naming the file and line."""
    inputs = [Input({"text": p}, f"--prompt {i + 1}") for i, p in enumerate(prompts)]
    if input_file:
        jsonl = input_file.endswith(".jsonl")
        items = iter_jsonl(input_file) if jsonl else iter_lines(input_file)
        for item in items:
            if isinstance(item, RowError):
                raise item
            if jsonl:
                inputs.append(Input(item.fields, f"{input_file}: line {item.line}"))
            elif item[1].strip():
                inputs.append(Input({"text": item[1]}, f"{input_file}: line {item[0]}"))
    if not inputs:
        raise ValueError("no inputs: pass --prompt (repeatable) or --input_file")
    return inputs


def _prompt_ids(spec, ctx: EncodeContext, item: Input) -> list[int]:
    try:
        return spec.prompt(item.fields, ctx)
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(
            f"{item.where}: {spec.name} cannot read {sorted(item.fields)} ({e!r}); see "
            "`--help` of the task's test.py for its fields"
        ) from None


def predict(model, tokenizer, task: dict, inputs: list, **generation) -> list[dict]:
    """Generations (LM tasks) or labels with probabilities (classifiers), one dict per input
    (an `Input`, or a dict of fields). An LM prompt is fitted, by the task's own rules, into
    the room the model has beside `max_new_tokens`."""
    spec = get_task(task["task"])
    inputs = [
        x if isinstance(x, Input) else Input(x, f"input {i + 1}") for i, x in enumerate(inputs)
    ]
    seq_len = task["seq_len"]
    if task["kind"] != "classifier":
        seq_len = min(seq_len, prompt_room(model, generation.get("max_new_tokens", 64)))
    ctx = EncodeContext(tokenizer, seq_len, {})
    ids = [_prompt_ids(spec, ctx, x)[-seq_len:] for x in inputs]  # a prompt keeps its end
    if task["kind"] != "classifier":
        new = generate(model, ids, stop_token_ids=(tokenizer.eos_id,), **generation)
        return [
            {
                "prompt": tokenizer.decode(p),
                "output": tokenizer.decode([t for t in n if t != tokenizer.eos_id]),
            }
            for p, n in zip(ids, new)
        ]
    probs = _classify(model, ids, tokenizer.eos_id)
    names = task["label_names"]
    return [
        {"label": names[int(p.argmax())], "probabilities": dict(zip(names, p.round(4).tolist()))}
        for p in probs
    ]


def _classify(model, ids: list[list[int]], pad_id: int, batch_size: int = 32) -> np.ndarray:
    """Class probabilities [N, C] of each input's ids, in length buckets (`data.buckets`) of
    `batch_size`: each batch is padded only to the shortest multiple of 8 that holds it."""
    lengths = np.array([len(row) for row in ids], np.int64)
    buckets = bucket_lengths(int(lengths.max()))
    plan = bucket_plan(lengths, buckets, batch_size, drop_remainder=False)
    probs = np.zeros((len(ids), model.num_classes))
    for length, indices in plan:
        token_ids = np.full((len(indices), length), pad_id, np.int32)
        for r, i in enumerate(indices):
            token_ids[r, : lengths[i]] = ids[i]
        mask = (np.arange(length)[None, :] < lengths[indices][:, None]).astype(np.int32)
        probs[indices] = _softmax(np.asarray(model({"token_ids": token_ids, "padding_mask": mask})))
    return probs


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
