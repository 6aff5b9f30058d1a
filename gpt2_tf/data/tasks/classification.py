"""classification_tuning: a text -> one of N labels (the emotion set by default).

Every example is the text's tokens then `<|endoftext|>`: the classifier head pools the last real
token, so each example ends in the same marker whatever its text. Sources: a folder of emotion
`train.txt`/`val.txt`/`test.txt` (`text;label` lines, split kept), one JSONL or CSV file (split
80/10/10 here), or `dair-ai/emotion` from the hub when online.
"""

from __future__ import annotations

import dataclasses
import functools
import os

from gpt2_tf.core import hub
from gpt2_tf.data.readers import Row, RowError, iter_delimited, iter_jsonl, iter_lines, require
from gpt2_tf.data.tasks import EncodeContext, Encoded, Flag, TaskSpec

LABELS = ("sadness", "joy", "love", "anger", "fear", "surprise")  # dair-ai/emotion's id order
HUB_ID = "dair-ai/emotion"
HUB_SPLITS = ("train", "validation", "test")  # its files: split/<name>-00000-of-00001.parquet
FOLDER_FILES = (("train.txt", "train"), ("val.txt", "validation"), ("test.txt", "test"))
FOLDER_HEADER = "text;label_name"
TEMPLATE = "{text}<|endoftext|>"
PREP_FLAGS = (
    Flag(
        "input",
        None,
        "A folder with train.txt, val.txt, test.txt (`text;label` "
        "lines, splits kept), or one .jsonl/.csv file (split 80/10/10). Default: "
        "dair-ai/emotion from the hub when online.",
        input=True,
    ),
    Flag("text_field", "text", "Text field of a .jsonl/.csv --input."),
    Flag("label_field", "label", "Label field (a name or an id) of a .jsonl/.csv --input."),
    Flag(
        "label_names",
        [],
        "Label names in id order (comma-separated); default: emotion's " + ",".join(LABELS) + ".",
        "list",
    ),
)
TRAIN_DEFAULTS = {"batch_size": 32, "learning_rate": 5e-4}


def parse_label(row: Row, field: str, names: tuple[str, ...]) -> int:
    """A label given by name or by integer id; a RowError listing the known labels otherwise."""
    value = row.fields.get(field)
    if value is None:
        raise RowError(row.file, row.line, field, "missing_field", "required field is missing")
    text = str(value).strip()
    if text in names:
        return names.index(text)
    if not isinstance(value, bool | float) and text.isdecimal() and int(text) < len(names):
        return int(text)
    known = ", ".join(f"{i}={n}" for i, n in enumerate(names))
    raise RowError(
        row.file, row.line, field, "bad_label", f"unknown label {value!r}; known: {known}"
    )


def resolve(options: dict) -> dict:
    """Settles the source and the field names it uses (a folder's and the hub's are fixed)."""
    path = options.get("input")
    if path and os.path.isdir(path):
        return {**options, "text_field": "text", "label_field": "label_name"}
    if path:
        fields = {
            "text_field": options.get("text_field") or "text",
            "label_field": options.get("label_field") or "label",
        }
        return {**options, **fields}
    try:
        files = {
            s: hub.dataset_file(HUB_ID, f"split/{s}-00000-of-00001.parquet", what=HUB_ID)
            for s in HUB_SPLITS
        }
    except hub.OfflineError as e:
        raise hub.OfflineError(
            f"classification_tuning: {e} For this task: --input=<a folder with "
            "train.txt, val.txt, test.txt, or a .jsonl/.csv file>."
        ) from e
    return {**options, "hub_files": files, "text_field": "text", "label_field": "label"}


def _read_folder(folder: str):
    for name, split in FOLDER_FILES:
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{folder}: no {name} (expected {[n for n, _ in FOLDER_FILES]})"
            )
        for item in iter_lines(path):
            if isinstance(item, RowError):
                yield item
                continue
            lineno, line = item
            if (lineno == 1 and line == FOLDER_HEADER) or not line.strip():
                continue  # the header is optional: dair-ai's own files have none
            if ";" not in line:
                yield RowError(path, lineno, None, "malformed_line", "no ';' before the label")
                continue
            text, label = line.rsplit(";", 1)  # the label follows the last ';'
            yield Row(path, lineno, {"text": text, "label_name": label}, split)


def _read_hub(files: dict):
    import pyarrow.parquet as pq

    for split, path in files.items():
        for index, fields in enumerate(pq.read_table(path).to_pylist()):
            yield Row(path, index + 1, fields, split)  # "line" is the 1-based table row


def _read_file(path: str):
    if path.endswith((".jsonl", ".json")):
        return iter_jsonl(path)
    if path.endswith(".csv"):
        return iter_delimited(path, ",")
    raise ValueError(f"{path}: expected a folder, a .jsonl or a .csv file")


def read(options: dict):
    if options.get("hub_files"):
        return _read_hub(options["hub_files"])
    if os.path.isdir(options["input"]):
        return _read_folder(options["input"])
    return _read_file(options["input"])


def encode(row: Row, ctx: EncodeContext, names: tuple[str, ...] = LABELS) -> Encoded:
    text = require(row, ctx.options["text_field"])
    label = parse_label(row, ctx.options["label_field"], names)
    ids, keep = ctx.tokenizer.encode(text), ctx.seq_len - 1
    return Encoded(ids[:keep] + [ctx.tokenizer.eos_id], label=label, truncated=len(ids) > keep)


def prompt(fields: dict, ctx: EncodeContext) -> list[int]:
    ids = ctx.tokenizer.encode(fields["text"])[: ctx.seq_len - 1]
    return ids + [ctx.tokenizer.eos_id]


def graph_prompt(fields: dict, tok, seq_len):
    """`prompt` in the graph (see `gpt2_tf.data.tasks.graph_prompt`)."""
    from gpt2_tf.data.tasks import graph_prompt as gp

    return gp.with_eos(tok, gp.head(tok.encode(gp.valid(fields["text"])), seq_len - 1))


def source(options: dict) -> dict:
    if options.get("hub_files"):
        return {"hub_id": HUB_ID, "paths": list(options["hub_files"].values())}
    path = options["input"]
    if os.path.isdir(path):
        return {"paths": [os.path.join(path, name) for name, _ in FOLDER_FILES]}
    return {"paths": [path]}


TASK = TaskSpec(
    name="classification_tuning",
    alias="emotion",
    prep_flags=PREP_FLAGS,
    train_defaults=TRAIN_DEFAULTS,
    # --label_names changes the spec itself (metadata.json records its names and counts)
    configure=lambda spec, options: with_label_names(options.get("label_names")),
    kind="classifier",
    read=read,
    encode=encode,
    resolve=resolve,
    source=source,
    prompt=prompt,
    input_fields=("text",),
    graph_prompt=graph_prompt,
    template=TEMPLATE,
    label_names=LABELS,
    seq_len=128,
    notes=(
        "text cut to seq_len-1 tokens, then <|endoftext|>: the head pools that last real token",
        "a folder's train/val/test files keep their split; a single file is split 80/10/10",
    ),
)


def with_label_names(names) -> TaskSpec:
    """TASK for another label set (`--label_names`); metadata.json records the spec's names."""
    if not names:
        return TASK
    names = tuple(names)
    return dataclasses.replace(
        TASK, label_names=names, encode=functools.partial(encode, names=names)
    )
