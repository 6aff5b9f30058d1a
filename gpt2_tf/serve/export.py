"""SavedModel export for serving: strings in, strings out, everything in the graph.

The export holds the model, the in-graph tokenizer (`tokenizer_graph.py`) and the KV-cached
decoding loop (`generation.decode`), so TensorFlow Serving, or `tf.saved_model.load` in a process
without gpt2_tf, runs it as is. It is written with Keras 3's `ExportArchive` into
`<export_dir>/<version>/`, the numbered layout TensorFlow Serving watches.

Signatures (`serving_default`):
- LM: prompts [B] string, max_new_tokens, temperature (<= 0: greedy), top_k (0: off),
  top_p (1.0: off), seed -> outputs [B] string, output_ids [B, N] int32, lengths [B] int32.
- classifier: texts [B] (entailment: premises [B] + hypotheses [B]) -> probabilities [B, C],
  labels [B] string.
"""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

from gpt2_tf.core.run_folder import EXPORT_EXTRA
from gpt2_tf.model.generation import decode


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


def _lm_endpoint(model, tok, eos: int):
    limit = model.config.n_positions

    def serve(prompts, max_new_tokens, temperature, top_k, top_p, seed):
        args = (prompts, max_new_tokens, temperature, top_k, top_p, seed)
        return tf.cond(tf.size(prompts) > 0, lambda: continue_prompts(*args), lambda: nothing())

    def nothing():  # a request of no prompts gets no outputs
        return {
            "outputs": tf.zeros([0], tf.string),
            "output_ids": tf.zeros([0, 0], tf.int32),
            "lengths": tf.zeros([0], tf.int32),
        }

    def continue_prompts(prompts, max_new_tokens, temperature, top_k, top_p, seed):
        ids = tok.encode(prompts)  # [B, (T)]
        empty = tf.cast(ids.row_lengths() == 0, tf.int64)  # "" is continued from <|endoftext|>
        eot = tf.RaggedTensor.from_row_lengths(tf.fill([tf.reduce_sum(empty)], eos), empty)
        ids = tf.concat([ids, eot], axis=1)
        max_new = tf.clip_by_value(max_new_tokens, 1, limit - 1)
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

    spec = [
        tf.TensorSpec([None], tf.string, "prompts"),
        tf.TensorSpec([], tf.int32, "max_new_tokens"),
        tf.TensorSpec([], tf.float32, "temperature"),
        tf.TensorSpec([], tf.int32, "top_k"),
        tf.TensorSpec([], tf.float32, "top_p"),
        tf.TensorSpec([], tf.int32, "seed"),
    ]
    return serve, spec


def _classify(model, ids: tf.RaggedTensor, eos: int, label_names):
    """Ids [B, (T)] (already within seq_len - 1) + EOT -> probabilities and label names."""
    ids = tf.concat([ids, tf.fill([ids.nrows(), 1], eos)], axis=1)
    token_ids = ids.to_tensor(eos)
    mask = tf.sequence_mask(ids.row_lengths(), tf.shape(token_ids)[1], tf.int32)
    probs = tf.nn.softmax(model({"token_ids": token_ids, "padding_mask": mask}), -1)
    labels = tf.gather(tf.constant(label_names), tf.argmax(probs, -1))
    return {"probabilities": probs, "labels": labels}


def _classifier_endpoint(model, tok, eos, task: dict):
    budget = task["seq_len"] - 1
    if task.get("task") == "entailment_tuning":
        from gpt2_tf.data.tasks.entailment import SEPARATOR as sep

        def serve(premises, hypotheses):
            rest = tok.encode(tf.strings.join([sep, hypotheses]))[:, -budget:]
            premise = tok.encode(premises)
            keep = tf.maximum(budget - rest.row_lengths(), 0)  # shorten the premise first
            premise = tf.ragged.boolean_mask(
                premise, tf.ragged.range(premise.row_lengths()) < keep[:, None]
            )
            return _classify(model, tf.concat([premise, rest], 1), eos, task["label_names"])

        return serve, [
            tf.TensorSpec([None], tf.string, "premises"),
            tf.TensorSpec([None], tf.string, "hypotheses"),
        ]

    def serve_texts(texts):
        return _classify(model, tok.encode(texts)[:, :budget], eos, task["label_names"])

    return serve_texts, [tf.TensorSpec([None], tf.string, "texts")]


def export_saved_model(
    model, tokenizer, export_dir: str, task: dict | None = None, version: int | None = None
) -> str:
    """Writes `export_dir/<version>/` and returns its path. `task` (from `task.json`) is needed
    for classifiers: label names, seq_len and, for entailment, the separator."""
    version = version or next_version(export_dir)
    path = os.path.join(export_dir, str(version))
    tok, eos = tokenizer.graph, tokenizer.eos_id
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(tok)
    if hasattr(model, "score"):
        if not task or "label_names" not in task:
            raise ValueError("exporting a classifier needs its task.json (label names, seq_len)")
        fn, spec = _classifier_endpoint(model, tok, eos, task)
    else:
        fn, spec = _lm_endpoint(model, tok, eos)
    archive.add_endpoint("serving_default", fn, input_signature=spec)
    archive.write_out(path, verbose=False)
    with open(os.path.join(path, EXPORT_EXTRA), "w", encoding="utf-8") as f:
        json.dump({"task": task or {"kind": "lm"}, "eos_id": eos}, f, indent=2)
    return path
