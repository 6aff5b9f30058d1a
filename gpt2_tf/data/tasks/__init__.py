"""Tasks: each one a small declarative `TaskSpec` (reader, encoder, template, splits, defaults).

The prep engine (`gpt2_tf.data.prep`) is shared; a task only says how raw rows are read and how one
row becomes `prompt -> target` token ids (LM tasks) or `text -> label` (classifier tasks).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
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


FLAG_KINDS = ("string", "integer", "float", "boolean", "list", "enum")


@dataclasses.dataclass(frozen=True)
class Flag:
    """One prep flag of a task, as data: `gpt2_tf.cli.define_prep_flags` defines it (an absl
    DEFINE_<kind>) and hands its value to the task's `read` as `options[name]`, or with
    `prep_option=True` to `PrepOptions` (e.g. subsample, num_stages)."""

    name: str
    default: object
    help: str
    kind: str = "string"  # one of FLAG_KINDS
    choices: tuple[str, ...] = ()  # kind "enum"
    required: bool = False
    input: bool = False  # the task's main input (what `--input` / make's INPUT= names)
    prep_option: bool = False  # a PrepOptions field, not a task option

    def __post_init__(self):
        if self.kind not in FLAG_KINDS:
            raise ValueError(f"flag {self.name}: kind must be one of {FLAG_KINDS}")
        if (self.kind == "enum") != bool(self.choices):
            raise ValueError(f"flag {self.name}: choices go with kind 'enum' (and only there)")


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
    seq_len: int = 256  # default of prep's --seq_len
    alias: str = ""  # the short name of `make prep-<alias>`, `python -m pipelines prep <alias>`
    prep_flags: tuple[Flag, ...] = ()  # the task's own prep flags (its input, its options)
    # TrainConfig field -> the task's default for train (and staged), e.g. LoRA for RTE
    train_defaults: dict = dataclasses.field(default_factory=dict, hash=False)
    # prep options (the flags' values) -> the spec to prep with (e.g. other label names)
    configure: Callable[[TaskSpec, dict], TaskSpec] | None = None
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
        if sum(f.input for f in self.prep_flags) > 1:
            raise ValueError(f"task {self.name}: at most one prep flag is the input")

    @property
    def input_flag(self) -> str | None:
        """The name of the prep flag that is the task's input, if one is."""
        return next((f.name for f in self.prep_flags if f.input), None)


# Task name -> the module whose TASK it is, or a TaskSpec given to `register`. Modules named in
# $GPT2_TF_TASKS (comma-separated) are imported on a lookup that misses, so that a task kept
# outside gpt2_tf is found in every process (prep, train, and the ones loading its model).
TASKS = {
    "instruction_tuning": "gpt2_tf.data.tasks.instruction",
    "classification_tuning": "gpt2_tf.data.tasks.classification",
    "entailment_tuning": "gpt2_tf.data.tasks.entailment",
    "dictionary_tuning": "gpt2_tf.data.tasks.dictionary",
    "style_tuning": "gpt2_tf.data.tasks.style",
    "text_tuning": "gpt2_tf.data.tasks.text",
}
DEFAULT_TASK = "instruction_tuning"  # the app opens runs/<it>/final when given no --model

TASKS_ENV = "GPT2_TF_TASKS"


def register(spec: TaskSpec) -> TaskSpec:
    """Makes `spec` a task `get_task` finds by its name and alias; returns it."""
    for other in all_tasks():
        if other.name != spec.name and spec.alias and spec.alias in (other.name, other.alias):
            raise ValueError(f"task {spec.name}: alias {spec.alias!r} is {other.name}'s")
    TASKS[spec.name] = spec
    return spec


def _load(name: str) -> TaskSpec:
    entry = TASKS[name]
    return entry if isinstance(entry, TaskSpec) else importlib.import_module(entry).TASK


def _import_env_tasks() -> None:
    for module in filter(None, os.environ.get(TASKS_ENV, "").split(",")):
        spec = importlib.import_module(module.strip()).TASK
        if not isinstance(TASKS.get(spec.name), TaskSpec):
            register(spec)


def all_tasks() -> list[TaskSpec]:
    """Every known task (built-in, registered, and those of $GPT2_TF_TASKS)."""
    return [_load(name) for name in list(TASKS)]


def get_task(name: str) -> TaskSpec:
    """The task called `name`: its full name (entailment_tuning) or its alias (rte)."""
    for attempt in range(2):
        if name in TASKS:
            return _load(name)
        for spec in all_tasks():
            if spec.alias == name:
                return spec
        if attempt == 0:
            _import_env_tasks()
    known = sorted(f"{s.name} ({s.alias})" if s.alias else s.name for s in all_tasks())
    raise ValueError(f"unknown task {name!r}; known: {', '.join(known)}")
