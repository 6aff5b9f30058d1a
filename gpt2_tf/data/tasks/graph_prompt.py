"""In-graph prompts: what a task's `graph_prompt` is built from.

A task's `graph_prompt(fields, tok, seq_len)` is the TensorFlow twin of its `prompt(fields, ctx)`:
`fields` {name: [B] string} (the task's `input_fields`), `tok` a `GraphTokenizer`, `seq_len` a
scalar -> [B, (T)] int32 ids, exactly the ids of the Python path for each row. So a SavedModel
takes a task's raw fields and applies its template (and its cuts of a field too long) itself.
The helpers here mirror the Python ones: `render` is `str.format`, `first_tokens` is
`tasks.first_tokens`, `fit` is the cut-and-re-encode loop of the tasks' `_fit`.
"""

from __future__ import annotations

import functools
import string
import sys

import tensorflow as tf

from gpt2_tf.tokenizer.vocab import EOT


def valid(texts) -> tf.Tensor:
    """[B] strings as valid UTF-8 (invalid bytes -> U+FFFD), as a Python str always is."""
    texts = tf.convert_to_tensor(texts, tf.string)
    return tf.strings.unicode_transcode(texts, "UTF-8", "UTF-8", errors="replace")


def render(template: str, **fields: tf.Tensor) -> tf.Tensor:
    """`template.format(**fields)` on [B] strings (plain `{name}` fields only)."""
    parts = []
    for literal, name, spec, conversion in string.Formatter().parse(template):
        if literal:
            parts.append(tf.constant(literal))
        if name is not None:
            if spec or conversion:
                raise ValueError(f"render: only plain {{name}} fields, not {{{name}...}}")
            parts.append(fields[name])
    if not any(p.shape.rank for p in parts):  # no field: broadcast to the batch of any field
        parts.append(tf.zeros_like(next(iter(fields.values()))))
    return tf.strings.join(parts)


@functools.cache
def _space_class() -> str:
    """The characters Python's `str.strip()` removes (`str.isspace`), as an RE2 class body."""
    return "".join(f"\\x{{{c:X}}}" for c in range(sys.maxunicode + 1) if chr(c).isspace())


def is_blank(texts: tf.Tensor) -> tf.Tensor:
    """[B] bool: `not text.strip()`."""
    return tf.strings.regex_full_match(texts, f"[{_space_class()}]*")


def strip(texts: tf.Tensor) -> tf.Tensor:
    """[B]: `text.strip()`."""
    space = _space_class()
    return tf.strings.regex_replace(texts, f"^[{space}]+|[{space}]+$", "")


def first_tokens(tok, texts: tf.Tensor, keep: tf.Tensor) -> tf.Tensor:
    """[B] texts, [B] keep -> the first `keep` tokens of each as text, a cut inside a character
    dropped (`tasks.first_tokens`)."""
    ids = tok.encode(texts)
    kept = tf.ragged.range(ids.row_lengths()) < tf.cast(keep, tf.int64)[:, None]
    return tf.strings.regex_replace(
        tok.decode(tf.ragged.boolean_mask(ids, kept)), "\\x{FFFD}+$", ""
    )


def lengths(tok, texts: tf.Tensor) -> tf.Tensor:
    return tok.encode(texts).row_lengths()  # [B] int64


def fit(tok, parts: list[tf.Tensor], render_parts, budget, order=None) -> tf.RaggedTensor:
    """Ids of `render_parts(*parts)` within `budget` tokens where the cuts allow: the parts in
    `order` (default: all, in turn) are shortened to their first tokens, one after the other,
    as the tasks' Python `_fit` does (cut by the excess, re-encode, repeat: re-encoding a cut
    text can shift a token). Rows already within `budget` are left as they are."""
    parts = list(parts)
    budget = tf.cast(budget, tf.int64)
    for i in range(len(parts)) if order is None else order:

        def with_part(text, i=i):
            return render_parts(*parts[:i], text, *parts[i + 1 :])

        def cond(text, keep, n):
            return tf.reduce_any((n > budget) & (keep > 0))

        def body(text, keep, n, with_part=with_part):
            cut = (n > budget) & (keep > 0)
            keep = tf.where(cut, keep - (n - budget), keep)
            text = tf.where(cut, first_tokens(tok, text, keep), text)
            return text, keep, lengths(tok, with_part(text))

        state = (parts[i], lengths(tok, parts[i]), lengths(tok, with_part(parts[i])))
        parts[i], _, _ = tf.while_loop(cond, body, state)
    return tok.encode(render_parts(*parts))


def with_eos(tok, ids: tf.RaggedTensor) -> tf.RaggedTensor:
    """[B, (T)] -> [B, (T + 1)]: `<|endoftext|>` appended to each row."""
    eos = tok.special_tokens[EOT]
    return tf.concat([ids, tf.fill([ids.nrows(), 1], tf.constant(eos, ids.dtype))], axis=1)


def head(ids: tf.RaggedTensor, n) -> tf.RaggedTensor:
    """Each row's first `n` ids (`ids[:n]`)."""
    return ids[:, : tf.cast(n, tf.int64)]
