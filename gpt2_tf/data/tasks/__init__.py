"""Tasks: each one a small declarative `TaskSpec` (reader, encoder, template, splits, defaults).

The prep engine (`gpt2_tf.data.prep`) is shared; a task only says how raw rows are read and how one
row becomes `prompt -> target` token ids (LM tasks) or `text -> label` (classifier tasks).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterator

from gpt2_tf.data.readers import Row, RowError
from gpt2_tf.data.records import CLASSIFIER, LM


@dataclasses.dataclass
class Encoded:
    """One row's tokens: `prompt_ids` carry no loss; `target_ids` do (LM); `label` (classifier)."""

    prompt_ids: list[int]
    target_ids: list[int] = dataclasses.field(default_factory=list)
    label: int | None = None
    truncated: bool = False


def first_tokens(tokenizer, text: str, keep: int) -> str:
    """The first `keep` tokens of `text` as text (a cut inside a character is dropped): how the
    tasks shorten a field that does not fit."""
    return tokenizer.decode(tokenizer.encode(text)[: max(keep, 0)]).rstrip("\ufffd")


class Drop(Exception):
    """A well-formed row that cannot become an example (e.g. its response alone is too long)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class EncodeContext:
    tokenizer: object
    seq_len: int
    options: dict


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # LM or CLASSIFIER
    read: Callable[[dict], Iterator[Row | RowError | Drop]]  # options -> rows, bad rows, filtered
    encode: Callable[[Row, EncodeContext], Encoded]  # may raise RowError or Drop
    template: str  # how a row reads to the model, recorded in metadata.json
    source: Callable[[dict], dict]  # options -> {"paths": [...]} or {"hub_id": ...}
    label_names: tuple[str, ...] = ()
    # Fractions for rows the source does not split itself; rows with `Row.split` keep theirs.
    fractions: tuple[tuple[str, float], ...] = (("train", 0.8), ("validation", 0.1), ("test", 0.1))
    pack: bool = False  # join documents with <|endoftext|> and cut full seq_len blocks
    seq_len: int = 256  # default
    notes: tuple[str, ...] = ()  # facts a reader of metadata.json should know
    # options -> options with the source settled (a hub download, the bundled sample), run once
    resolve: Callable[[dict], dict] = lambda options: options
    # an inference input (fields such as {"text": ...}) -> the ids the model sees, as in prep:
    # LM tasks the prompt, classifiers the whole input with its <|endoftext|>
    prompt: Callable[[dict, EncodeContext], list[int]] | None = None
    # the fields of an inference input that `prompt` reads, in the order a form asks for them
    input_fields: tuple[str, ...] = ("text",)
    # `prompt` in the graph, for a SavedModel that takes the raw fields: ({field: [B] string},
    # GraphTokenizer, seq_len scalar) -> [B, (T)] int32 ids, the same ids as `prompt`
    # (helpers in `gpt2_tf.data.tasks.graph_prompt`)
    graph_prompt: Callable[[dict, object, object], object] | None = None
    # tokenizer -> the shortest seq_len that holds the template with one token of each field
    # and <|endoftext|>; prep refuses a smaller --seq_len
    min_seq_len: Callable[[object], int] = lambda tokenizer: 2

    def __post_init__(self):
        if self.kind not in (LM, CLASSIFIER):
            raise ValueError(f"task {self.name}: kind must be {LM!r} or {CLASSIFIER!r}")
        if self.kind == CLASSIFIER and not self.label_names:
            raise ValueError(f"task {self.name}: a classifier task needs label_names")


TASKS = {
    "instruction_tuning": "gpt2_tf.data.tasks.instruction",
    "classification_tuning": "gpt2_tf.data.tasks.classification",
    "entailment_tuning": "gpt2_tf.data.tasks.entailment",
    "dictionary_tuning": "gpt2_tf.data.tasks.dictionary",
    "style_tuning": "gpt2_tf.data.tasks.style",
    "text_tuning": "gpt2_tf.data.tasks.text",
}
DEFAULT_TASK = "instruction_tuning"  # the app opens runs/<it>/final when given no --model


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return importlib.import_module(TASKS[name]).TASK
