"""entailment_tuning: GLUE RTE (premise, hypothesis) -> entailment / not_entailment.

One text per pair, `{premise}\\nHypothesis: {hypothesis}<|endoftext|>`: the separator is visible
text, so the model reads where the hypothesis starts without a new token. GLUE's test split has
no labels, so train.tsv is held out 90/10 (seeded) into train/validation and dev.tsv is the test.
"""

from __future__ import annotations

import os
import socket

from gpt2_tf.core import hub
from gpt2_tf.data.readers import Row, iter_delimited, require
from gpt2_tf.data.tasks import Drop, EncodeContext, Encoded, Flag, TaskSpec, first_tokens
from gpt2_tf.data.tasks.classification import parse_label

LABELS = ("entailment", "not_entailment")  # GLUE's ids: 0, 1
SEPARATOR = "\nHypothesis: "
TEMPLATE = "{premise}" + SEPARATOR + "{hypothesis}<|endoftext|>"
FILES = (("train.tsv", None), ("dev.tsv", "test"))  # None: split here by TaskSpec.fractions
TFDS_NAME, TFDS_HOST = "glue/rte", "dl.fbaipublicfiles.com"  # where tfds downloads RTE.zip
TFDS_SPLITS = (("train", None), ("validation", "test"))
PREP_FLAGS = (
    Flag(
        "input_dir",
        None,
        "GLUE RTE folder with train.tsv and dev.tsv. Default: "
        "tensorflow-datasets' glue/rte (downloaded when online).",
        input=True,
    ),
)
# LoRA by default, as in the original RTE project.
TRAIN_DEFAULTS = {"lora_rank": 8, "lora_alpha": 16, "learning_rate": 1e-3, "batch_size": 16}


def render(premise: str, hypothesis: str) -> str:
    return premise + SEPARATOR + hypothesis


def _tfds_builder(options: dict):
    import tensorflow_datasets as tfds

    return tfds.builder(TFDS_NAME, data_dir=options.get("tfds_data_dir"))


def resolve(options: dict) -> dict:
    """A given --input_dir; else tensorflow-datasets' glue/rte, prepared once (online)."""
    if options.get("input_dir"):
        return options
    builder = _tfds_builder(options)
    if not builder.is_prepared():
        try:
            socket.create_connection((TFDS_HOST, 443), timeout=3.0).close()
        except OSError as e:
            raise hub.OfflineError(
                f"entailment_tuning: {TFDS_NAME} is not prepared in {builder.data_dir} and "
                f"{TFDS_HOST} cannot be reached ({e.__class__.__name__}: {e}). Pass "
                "--input_dir=<a folder with GLUE's RTE train.tsv and dev.tsv>."
            ) from e
        builder.download_and_prepare()
    return {**options, "tfds": TFDS_NAME, "tfds_data_dir": str(builder.data_dir_root)}


def _read_tfds(options: dict):
    import tensorflow_datasets as tfds

    builder = _tfds_builder(options)
    for tfds_split, split in TFDS_SPLITS:
        name = f"tfds:{TFDS_NAME}/{tfds_split}"
        for index, ex in enumerate(tfds.as_numpy(builder.as_dataset(split=tfds_split))):
            fields = {k: ex[k].decode("utf-8") for k in ("sentence1", "sentence2")}
            yield Row(name, index + 1, {**fields, "label": int(ex["label"])}, split)


def read(options: dict):
    if options.get("tfds"):
        yield from _read_tfds(options)
        return
    for name, split in FILES:
        path = os.path.join(options["input_dir"], name)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{options['input_dir']}: no {name} (RTE needs train.tsv, dev.tsv)"
            )
        yield from iter_delimited(path, "\t", split=split)


def _fit(tok, parts: list[str], budget: int) -> tuple[list[int], bool]:
    """Ids of `render(*parts)` within `budget`: the premise's end is cut first, then the
    hypothesis's. Re-encoding a cut text can shift a token, so each cut is checked and repeated."""
    ids, truncated = tok.encode(render(*parts)), False
    for i in range(len(parts)):
        if len(ids) <= budget:
            break
        keep = len(tok.encode(parts[i]))
        while len(ids) > budget and keep > 0:
            keep -= len(ids) - budget
            parts[i] = first_tokens(tok, parts[i], keep)
            ids, truncated = tok.encode(render(*parts)), True
    return ids, truncated


def encode(row: Row, ctx: EncodeContext) -> Encoded:
    parts = [require(row, "sentence1"), require(row, "sentence2")]
    label = parse_label(row, "label", LABELS)
    ids, truncated = _fit(ctx.tokenizer, parts, ctx.seq_len - 1)
    if len(ids) > ctx.seq_len - 1:
        raise Drop("too_long")  # only when seq_len cannot hold even the separator
    return Encoded(ids + [ctx.tokenizer.eos_id], label=label, truncated=truncated)


def prompt(fields: dict, ctx: EncodeContext) -> list[int]:
    parts = [fields.get("premise") or fields["text"], fields.get("hypothesis", "")]
    return _fit(ctx.tokenizer, parts, ctx.seq_len - 1)[0][: ctx.seq_len - 1] + [
        ctx.tokenizer.eos_id
    ]


def graph_prompt(fields: dict, tok, seq_len):
    """`prompt` in the graph (see `gpt2_tf.data.tasks.graph_prompt`): the premise cut first,
    then the hypothesis, then <|endoftext|>."""
    from gpt2_tf.data.tasks import graph_prompt as gp

    def render_parts(premise, hypothesis):
        return gp.render(
            "{premise}" + SEPARATOR + "{hypothesis}", premise=premise, hypothesis=hypothesis
        )

    parts = [gp.valid(fields["premise"]), gp.valid(fields["hypothesis"])]
    ids = gp.fit(tok, parts, render_parts, seq_len - 1)
    return gp.with_eos(tok, gp.head(ids, seq_len - 1))


def source(options: dict) -> dict:
    if options.get("tfds"):
        return {"tfds": TFDS_NAME, "data_dir": options["tfds_data_dir"]}
    return {"paths": [os.path.join(options["input_dir"], name) for name, _ in FILES]}


def min_seq_len(tok) -> int:
    """A premise token, the separator, a hypothesis token, <|endoftext|>."""
    return len(tok.encode(render("a", "a"))) + 1


TASK = TaskSpec(
    name="entailment_tuning",
    alias="rte",
    prep_flags=PREP_FLAGS,
    train_defaults=TRAIN_DEFAULTS,
    kind="classifier",
    read=read,
    encode=encode,
    resolve=resolve,
    source=source,
    prompt=prompt,
    input_fields=("premise", "hypothesis"),
    graph_prompt=graph_prompt,
    template=TEMPLATE,
    label_names=LABELS,
    fractions=(("train", 0.9), ("validation", 0.1)),
    seq_len=256,
    min_seq_len=min_seq_len,
    notes=(
        "GLUE's RTE test split has no labels: train.tsv is split 90/10 (seeded) into "
        "train/validation, and dev.tsv (GLUE's validation) is the test split",
        "premise and hypothesis are joined by the visible text '\\nHypothesis: '",
        "too long: the premise is cut first (its beginning kept), then the hypothesis",
    ),
)
