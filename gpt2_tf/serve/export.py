"""SavedModel export for serving: strings in, strings out, everything in the graph.

The export holds the model, the in-graph tokenizer (`tokenizer_graph.py`) and the KV-cached
decoding loop (`generation.decode`), so TensorFlow Serving, or `tf.saved_model.load` in a process
without gpt2_tf, runs it as is. It is written with Keras 3's `ExportArchive` into
`<export_dir>/<version>/`, the numbered layout TensorFlow Serving watches.

Signatures (names, inputs and outputs recorded in the export's `assets.extra.json`):
- LM `serving_default`: prompts [B] string (a finished prompt, no template applied),
  max_new_tokens, temperature (<= 0: greedy), top_k (0: off), top_p (1.0: off), seed
  -> outputs [B] string, output_ids [B, N] int32, lengths [B] int32.
- LM `fields` (exported with its task.json): one [B] string per `TaskSpec.input_fields` (e.g.
  instruction, context) and the same settings. The task's `graph_prompt` renders the template
  and fits the prompt beside max_new_tokens, as `inference.predict` does -> the outputs above and
  prompts [B] string (the prompt as the model sees it).
- classifier `serving_default` and `fields` (the same): one [B] string per input field (e.g.
  text; premise, hypothesis) -> probabilities [B, C], labels [B] string.
"""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

from gpt2_tf.core.run_folder import EXPORT_EXTRA
from gpt2_tf.data.tasks import get_task
from gpt2_tf.model.generation import decode

DEFAULT = "serving_default"
FIELDS = "fields"  # the signature that takes a task's raw input fields (TaskSpec.input_fields)


def next_version(export_dir: str) -> int:
    if not os.path.isdir(export_dir):
        return 1
    versions = [int(n) for n in os.listdir(export_dir) if n.isdigit()]
    return max(versions, default=0) + 1


def _left_pad(ids: tf.RaggedTensor):
    """Ragged [B, (T)] -> left-padded ids [B, P] and mask [B, P]."""
    lengths = tf.cast(ids.row_lengths(), tf.int32)
    width = tf.reduce_max(lengths)
    dense = ids.to_tensor(0)
    shift = tf.range(width)[None, :] - (width - lengths)[:, None]  # [B, P], < 0 on padding
    mask = tf.cast(shift >= 0, tf.int32)
    return tf.gather(dense, tf.maximum(shift, 0), batch_dims=1) * mask, mask


SETTINGS = [  # the LM signatures' decoding settings, after their texts
    tf.TensorSpec([], tf.int32, "max_new_tokens"),
    tf.TensorSpec([], tf.float32, "temperature"),
    tf.TensorSpec([], tf.int32, "top_k"),
    tf.TensorSpec([], tf.float32, "top_p"),
    tf.TensorSpec([], tf.int32, "seed"),
]
LM_OUTPUTS = ["outputs", "output_ids", "lengths"]
CLASSIFIER_OUTPUTS = ["probabilities", "labels"]


def _texts(names) -> list[tf.TensorSpec]:
    return [tf.TensorSpec([None], tf.string, name) for name in names]


def _lm_endpoints(model, tok, eos: int, spec=None, seq_len: int | None = None) -> dict:
    """{signature name: (function, input specs, output names)}: `prompts` (serving_default), and
    with a task that renders its prompt in the graph, its raw fields (FIELDS)."""
    limit = model.config.n_positions

    def nothing(extra=()):  # a request of no prompts gets no outputs
        out = {
            "outputs": tf.zeros([0], tf.string),
            "output_ids": tf.zeros([0, 0], tf.int32),
            "lengths": tf.zeros([0], tf.int32),
        }
        return {**out, **{k: tf.zeros([0], tf.string) for k in extra}}

    def continue_ids(ids, max_new, temperature, top_k, top_p, seed):
        empty = tf.cast(ids.row_lengths() == 0, tf.int64)  # "" is continued from <|endoftext|>
        eot = tf.RaggedTensor.from_row_lengths(tf.fill([tf.reduce_sum(empty)], eos), empty)
        ids = tf.concat([ids, eot], axis=1)
        ids = ids[:, -(limit - max_new) :]  # an over-long prompt keeps its end
        prompt_ids, mask = _left_pad(ids)
        new, lengths = decode(
            model,
            prompt_ids,
            mask,
            max_new,
            max_new,
            temperature,
            top_k,
            top_p,
            seed,
            tf.constant([eos], tf.int32),
        )
        text_lengths = lengths - tf.cast(tf.reduce_any(new == eos, 1), tf.int32)  # drop the EOT
        outputs = tok.decode(tf.RaggedTensor.from_tensor(new, lengths=text_lengths))
        return {"outputs": outputs, "output_ids": new, "lengths": lengths}

    def serve(prompts, max_new_tokens, temperature, top_k, top_p, seed):
        def run():
            max_new = tf.clip_by_value(max_new_tokens, 1, limit - 1)
            return continue_ids(tok.encode(prompts), max_new, temperature, top_k, top_p, seed)

        return tf.cond(tf.size(prompts) > 0, run, nothing)

    endpoints = {DEFAULT: (serve, _texts(["prompts"]) + SETTINGS, LM_OUTPUTS)}
    if spec is None or spec.graph_prompt is None:
        return endpoints
    names = list(spec.input_fields)

    def serve_fields(*args):
        fields = dict(zip(names, args[: len(names)]))  # then the settings, as in SETTINGS
        max_new_tokens, temperature, top_k, top_p, seed = args[len(names) :]

        def run():  # the prompt fitted as `inference.predict` fits it beside max_new_tokens
            max_new = tf.clip_by_value(max_new_tokens, 1, limit - 1)
            budget = tf.minimum(seq_len, limit - max_new)
            ids = spec.graph_prompt(fields, tok, budget)[:, -tf.cast(budget, tf.int64) :]
            out = continue_ids(ids, max_new, temperature, top_k, top_p, seed)
            return {**out, "prompts": tok.decode(ids)}

        return tf.cond(tf.size(args[0]) > 0, run, lambda: nothing(["prompts"]))

    endpoints[FIELDS] = (serve_fields, _texts(names) + SETTINGS, LM_OUTPUTS + ["prompts"])
    return endpoints


def _classifier_endpoints(model, tok, eos: int, spec, task: dict) -> dict:
    """The task's raw fields -> probabilities and labels, as FIELDS and as serving_default."""
    if spec.graph_prompt is None:
        raise ValueError(f"{spec.name}: the task has no graph_prompt, so it cannot be exported")
    names, label_names = list(spec.input_fields), list(task["label_names"])

    def make():
        def serve_fields(*texts):
            ids = spec.graph_prompt(dict(zip(names, texts)), tok, task["seq_len"])  # with EOT
            token_ids = ids.to_tensor(eos)
            mask = tf.sequence_mask(ids.row_lengths(), tf.shape(token_ids)[1], tf.int32)
            probs = tf.nn.softmax(model({"token_ids": token_ids, "padding_mask": mask}), -1)
            labels = tf.gather(tf.constant(label_names), tf.argmax(probs, -1))
            return {"probabilities": probs, "labels": labels}

        return serve_fields, _texts(names), CLASSIFIER_OUTPUTS

    return {DEFAULT: make(), FIELDS: make()}


def export_saved_model(
    model, tokenizer, export_dir: str, task: dict | None = None, version: int | None = None
) -> str:
    """Writes `export_dir/<version>/` and returns its path. `task` (from `task.json`) is needed
    for classifiers (task, label names, seq_len); with it an LM export also gets the FIELDS
    signature, which applies the task's template in the graph."""
    version = version or next_version(export_dir)
    path = os.path.join(export_dir, str(version))
    tok, eos = tokenizer.graph, tokenizer.eos_id
    spec = get_task(task["task"]) if task and "task" in task else None
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(tok)
    if hasattr(model, "score"):
        if not task or "label_names" not in task or spec is None:
            raise ValueError("exporting a classifier needs its task.json (task, labels, seq_len)")
        endpoints = _classifier_endpoints(model, tok, eos, spec, task)
    else:
        seq_len = (task or {}).get("seq_len", model.config.n_positions)
        endpoints = _lm_endpoints(model, tok, eos, spec, seq_len)
    for name, (fn, inputs, _) in endpoints.items():
        archive.add_endpoint(name, fn, input_signature=inputs)
    archive.write_out(path, verbose=False)
    signatures = {
        name: {"inputs": [s.name for s in inputs], "outputs": outputs}
        for name, (_, inputs, outputs) in endpoints.items()
    }
    extra = {"task": task or {"kind": "lm"}, "eos_id": eos, "signatures": signatures}
    if FIELDS in endpoints:
        extra["input_fields"] = list(spec.input_fields)
    with open(os.path.join(path, EXPORT_EXTRA), "w", encoding="utf-8") as f:
        json.dump(extra, f, indent=2)
    return path
