"""instruction_tuning: Dolly-style rows (instruction, context, response, category) -> prompt/target.

The loss covers the response and its `<|endoftext|>` only. Prompt and response are tokenized
apart, as at generation time, where the model continues the tokenized prompt. Too long: the
context is shortened first, then the instruction; a row is dropped only when the response itself
cannot fit.
"""

from __future__ import annotations

import os

from gpt2_tf.core import hub
from gpt2_tf.data.readers import Row, iter_jsonl, require
from gpt2_tf.data.tasks import Drop, EncodeContext, Encoded, Flag, TaskSpec, first_tokens

HUB_ID, HUB_FILE = "databricks/databricks-dolly-15k", "databricks-dolly-15k.jsonl"
BUNDLED = os.path.join(os.path.dirname(os.path.dirname(__file__)), "samples", "instructions.jsonl")
WITH_CONTEXT = "### Instruction:\n{instruction}\n\n### Context:\n{context}\n\n### Response:\n"
NO_CONTEXT = "### Instruction:\n{instruction}\n\n### Response:\n"
PREP_FLAGS = (
    Flag(
        "input_jsonl",
        None,
        "Dolly-format JSONL (instruction, context, response, "
        "category). Default: databricks/databricks-dolly-15k from the hub when online, "
        "else the sample bundled with gpt2_tf.",
        input=True,
    ),
    Flag("categories", [], "Keep only these categories (comma-separated); all if empty.", "list"),
)
# 3 epochs, as instruction-tuning recipes use; the bundled sample is 64 training examples.
TRAIN_DEFAULTS = {"batch_size": 8, "learning_rate": 5e-4, "epochs": 3}


def render_prompt(instruction: str, context: str = "") -> str:
    template = WITH_CONTEXT if context.strip() else NO_CONTEXT
    return template.format(instruction=instruction, context=context)


def resolve(options: dict) -> dict:
    """A given --input_jsonl; else Dolly-15k from the hub when online; else the bundled sample."""
    if options.get("input_jsonl"):
        return options
    try:
        path = hub.dataset_file(HUB_ID, HUB_FILE, what="instruction_tuning")
    except hub.OfflineError as e:
        print(f"instruction_tuning: {e}\n  -> using the bundled sample {BUNDLED}")
        path = BUNDLED
    return {**options, "input_jsonl": path}


def read(options: dict):
    categories = set(options.get("categories") or ())
    for row in iter_jsonl(options["input_jsonl"]):
        if categories and isinstance(row, Row) and row.fields.get("category") not in categories:
            yield Drop("category_filtered")
        else:
            yield row


def _fit(tok, instruction: str, context: str, budget: int) -> tuple[list[int], bool]:
    """Prompt ids within `budget`, shortening the context, then the instruction."""
    prompt = tok.encode(render_prompt(instruction, context))
    truncated = False
    for field in ("context", "instruction"):
        text = context if field == "context" else instruction
        keep = len(tok.encode(text))
        while len(prompt) > budget and keep > 0:
            keep -= len(prompt) - budget  # re-encoding can shift a token, so check and repeat
            text = first_tokens(tok, text, keep)
            context, instruction = (text, instruction) if field == "context" else (context, text)
            prompt, truncated = tok.encode(render_prompt(instruction, context)), True
    return prompt, truncated


def encode(row: Row, ctx: EncodeContext) -> Encoded:
    tok = ctx.tokenizer
    instruction, response = require(row, "instruction"), require(row, "response")
    context = require(row, "context", allow_empty=True) if "context" in row.fields else ""
    target = tok.encode(response) + [tok.eos_id]
    budget = ctx.seq_len - len(target)
    if budget < len(tok.encode(render_prompt(""))):
        raise Drop("response_too_long")
    prompt, truncated = _fit(tok, instruction, context, budget)
    if len(prompt) > budget:
        raise Drop("response_too_long")
    return Encoded(prompt, target, truncated=truncated)


def prompt(fields: dict, ctx: EncodeContext) -> list[int]:
    instruction = fields.get("instruction") or fields["text"]
    return _fit(ctx.tokenizer, instruction, fields.get("context") or "", ctx.seq_len)[0]


def graph_prompt(fields: dict, tok, seq_len):
    """`prompt` in the graph (see `gpt2_tf.data.tasks.graph_prompt`): the same template and
    the same cuts, the context first, then the instruction."""
    import tensorflow as tf

    from gpt2_tf.data.tasks import graph_prompt as gp

    def render(context, instruction):
        with_context = gp.render(WITH_CONTEXT, instruction=instruction, context=context)
        no_context = gp.render(NO_CONTEXT, instruction=instruction)
        return tf.where(gp.is_blank(context), no_context, with_context)

    parts = [gp.valid(fields["context"]), gp.valid(fields["instruction"])]
    return gp.fit(tok, parts, render, seq_len)


def source(options: dict) -> dict:
    path = options["input_jsonl"]
    return {"paths": [path], "bundled_sample": path == BUNDLED}


def min_seq_len(tok) -> int:
    """The prompt's frame, one instruction token, one response token, <|endoftext|>."""
    return len(tok.encode(render_prompt("a"))) + 2


TASK = TaskSpec(
    name="instruction_tuning",
    alias="dolly",
    prep_flags=PREP_FLAGS,
    train_defaults=TRAIN_DEFAULTS,
    kind="lm",
    read=read,
    encode=encode,
    resolve=resolve,
    source=source,
    prompt=prompt,
    input_fields=("instruction", "context"),
    graph_prompt=graph_prompt,
    template=WITH_CONTEXT + "{response}<|endoftext|>   (### Context section only when non-empty)",
    seq_len=1024,  # GPT-2's context: packing makes the long rows cost nothing extra
    min_seq_len=min_seq_len,
    notes=("loss on the response and its <|endoftext|> only (prompt_length marks the prompt)",),
)
