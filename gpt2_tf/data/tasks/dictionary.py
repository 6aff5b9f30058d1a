"""dictionary_tuning: Wiktionary senses -> a word's definition (forward) or the word (reverse).

forward  "Word: {word}\\nDefinition:" -> " {definition}" (+ "\\nExample: {example}") <|endoftext|>
reverse  "Definition: {definition}\\nWord:" -> " {word}" <|endoftext|>
both     every sense gives one example of each

The loss covers the generated side only; prompt and target are tokenized apart, as at generation
time. The split goes by word (all senses of a word in one split), so the test set of the reverse
dictionary asks for words the model never saw. Too long: the example sentence goes first, then the
definition is shortened; a sense is dropped only when no definition token fits.
"""

from __future__ import annotations

import html
import re

from gpt2_tf.data.readers import Row, RowError, iter_jsonl, require
from gpt2_tf.data.tasks import Drop, EncodeContext, Encoded, Flag, TaskSpec, first_tokens

WORD_PROMPT = "Word: {word}\nDefinition:"
DEFINITION_TARGET = " {definition}"
EXAMPLE = "\nExample: {example}"
DEFINITION_PROMPT = "Definition: {definition}\nWord:"
WORD_TARGET = " {word}"
DIRECTIONS = ("forward", "reverse", "both")
PREP_FLAGS = (
    Flag(
        "input_jsonl",
        None,
        "Wiktionary senses, one JSON object a line: {word, pos, definition, examples[]}. "
        "Required: this task has no hub source (`make prep-dictionary INPUT=<file>`).",
        input=True,
    ),
    Flag(
        "direction",
        "forward",
        "forward: word -> definition (+ example); reverse: definition -> word; both: one of "
        "each per sense.",
        "enum",
        choices=DIRECTIONS,
    ),
)
TRAIN_DEFAULTS = {"batch_size": 8, "learning_rate": 5e-4}
DIRECTION = "_direction"  # the field the reader adds to each row it yields: forward or reverse

_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_SPACE = re.compile(r"\s+")


def clean(text: str) -> str:
    """Plain text of a Wiktionary string: tags removed, entities decoded, white space collapsed."""
    # Tags go before entities are decoded, so an escaped "&lt;b&gt;" stays as the text "<b>".
    return _SPACE.sub(" ", html.unescape(_TAG.sub("", text))).strip()


def resolve(options: dict) -> dict:
    if not options.get("input_jsonl"):
        raise ValueError(
            "dictionary_tuning: pass --input_jsonl (Wiktionary senses, one JSON "
            "object a line); this task has no hub source"
        )
    direction = options.get("direction") or "forward"
    if direction not in DIRECTIONS:
        raise ValueError(
            f"dictionary_tuning: direction must be one of {DIRECTIONS}, got {direction!r}"
        )
    return {**options, "direction": direction}


def _raw_examples(row: Row) -> list[str]:
    examples = row.fields.get("examples") or []  # optional: a sense may have none
    if not isinstance(examples, list) or not all(isinstance(e, str) for e in examples):
        raise RowError(row.file, row.line, "examples", "bad_field", "expected a list of texts")
    return examples


def _check(row: Row) -> str:
    """The sense's word, once word, definition and examples are known to be usable."""
    word = require(row, "word").strip()
    if not clean(require(row, "definition")):
        raise RowError(
            row.file, row.line, "definition", "empty_field", "empty once HTML is removed"
        )
    _raw_examples(row)
    return word


def read(options: dict):
    """Each sense once per direction; a bad line once, whatever the direction."""
    both = options["direction"] == "both"
    directions = ("forward", "reverse") if both else (options["direction"],)
    for row in iter_jsonl(options["input_jsonl"]):
        if isinstance(row, Row):
            try:
                word = _check(row)
            except RowError as e:
                row = e
        if isinstance(row, RowError):
            yield row
            continue
        for direction in directions:
            # Case folded: "Jack" and "jack" stay together, so no test word is a train word recased.
            yield Row(
                row.file, row.line, {**row.fields, DIRECTION: direction}, group=word.casefold()
            )


def _fit(tok, render, text: str, budget: int) -> tuple[list[int] | None, bool]:
    """Ids of `render(text)` within `budget`, shortening `text`; None when none of it fits."""
    ids, cut = tok.encode(render(text)), False
    keep = len(tok.encode(text)) if len(ids) > budget else 0
    while len(ids) > budget and keep > 0:
        keep -= len(ids) - budget  # re-encoding can shift a token, so check and repeat
        text, cut = first_tokens(tok, text, keep).rstrip(), True
        ids = tok.encode(render(text))
    return (ids if len(ids) <= budget and text else None), cut


def _forward(tok, word: str, definition: str, examples: list[str], seq_len: int) -> Encoded:
    prompt = tok.encode(WORD_PROMPT.format(word=word))
    budget = seq_len - len(prompt) - 1  # room for the target before <|endoftext|>
    render = lambda d: DEFINITION_TARGET.format(definition=d)  # noqa: E731
    if examples:
        target = tok.encode(render(definition) + EXAMPLE.format(example=examples[0]))
        if len(target) <= budget:
            return Encoded(prompt, target + [tok.eos_id])
    # No example, or too long with it: the example goes first, then the definition is cut.
    target, cut = _fit(tok, render, definition, budget)
    if target is None:
        raise Drop("too_long")
    return Encoded(prompt, target + [tok.eos_id], truncated=cut or bool(examples))


def _reverse(tok, word: str, definition: str, seq_len: int) -> Encoded:
    target = tok.encode(WORD_TARGET.format(word=word)) + [tok.eos_id]
    render = lambda d: DEFINITION_PROMPT.format(definition=d)  # noqa: E731
    prompt, cut = _fit(tok, render, definition, seq_len - len(target))
    if prompt is None:
        raise Drop("too_long")
    return Encoded(prompt, target, truncated=cut)


def encode(row: Row, ctx: EncodeContext) -> Encoded:
    word, definition = row.fields["word"].strip(), clean(row.fields["definition"])
    examples = [e for e in map(clean, _raw_examples(row)) if e]  # the first non-empty one is used
    if row.fields[DIRECTION] == "reverse":
        return _reverse(ctx.tokenizer, word, definition, ctx.seq_len)
    return _forward(ctx.tokenizer, word, definition, examples, ctx.seq_len)


def prompt(fields: dict, ctx: EncodeContext) -> list[int]:
    """{"word": w} asks for a definition; {"definition": d} (reverse) asks for the word."""
    if fields.get("definition"):
        return ctx.tokenizer.encode(
            DEFINITION_PROMPT.format(definition=clean(fields["definition"]))
        )
    return ctx.tokenizer.encode(WORD_PROMPT.format(word=fields.get("word") or fields["text"]))


def graph_prompt(fields: dict, tok, seq_len):
    """`prompt` in the graph for {"word": w}, the forward direction (a definition asked)."""
    from gpt2_tf.data.tasks import graph_prompt as gp

    return tok.encode(gp.render(WORD_PROMPT, word=gp.valid(fields["word"])))


def source(options: dict) -> dict:
    return {"paths": [options["input_jsonl"]]}


def min_seq_len(tok) -> int:
    """Either direction's frame with a one-token word and definition, and <|endoftext|>."""
    forward = tok.encode(WORD_PROMPT.format(word="a") + DEFINITION_TARGET.format(definition="a"))
    reverse = tok.encode(DEFINITION_PROMPT.format(definition="a") + WORD_TARGET.format(word="a"))
    return max(len(forward), len(reverse)) + 1


TASK = TaskSpec(
    name="dictionary_tuning",
    alias="dictionary",
    prep_flags=PREP_FLAGS,
    train_defaults=TRAIN_DEFAULTS,
    kind="lm",
    read=read,
    encode=encode,
    resolve=resolve,
    source=source,
    prompt=prompt,
    input_fields=("word",),
    graph_prompt=graph_prompt,
    template=(
        f"forward: {WORD_PROMPT}{DEFINITION_TARGET}{EXAMPLE}<|endoftext|>   (the Example "
        f"line only when the sense has one: its first)   reverse: {DEFINITION_PROMPT}"
        f"{WORD_TARGET}<|endoftext|>"
    ),
    seq_len=128,
    min_seq_len=min_seq_len,
    notes=(
        "loss on the generated side only (the definition, or the word) and its <|endoftext|>",
        "split by word, case folded: all senses of a word are in one split",
        "HTML tags stripped, entities decoded, runs of white space collapsed to one space",
        "too long: the example goes first, then the definition is shortened (truncated counts "
        "both); dropped as too_long only when no definition token fits",
    ),
)
