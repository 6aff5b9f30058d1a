"""Each task's in-graph prompt (`TaskSpec.graph_prompt`) gives exactly the ids of its Python
`prompt`, on real inputs, cuts included: what lets an export take the task's raw fields."""

import csv
import json

import pytest
import tensorflow as tf

from gpt2_tf.data.tasks import TASKS, EncodeContext, get_task
from tests.conftest import shared


def python_and_graph(tokenizer, name: str, inputs: list[dict], seq_len: int):
    spec = get_task(name)
    ctx = EncodeContext(tokenizer, seq_len, {})
    want = [spec.prompt(x, ctx) for x in inputs]
    fields = {f: tf.constant([x.get(f, "") for x in inputs]) for f in spec.input_fields}
    tok = tokenizer.graph  # built eagerly, then used in a graph as an export does
    fn = tf.function(lambda f, n: spec.graph_prompt(f, tok, n))
    got = fn(fields, tf.constant(seq_len)).to_list()
    return want, got


def test_every_task_has_input_fields_and_a_graph_prompt():
    for name in TASKS:
        spec = get_task(name)
        assert spec.input_fields and spec.graph_prompt is not None, name


def dolly_rows(n: int) -> list[dict]:
    rows = []
    with open(shared("dolly", "dolly_first743.jsonl"), encoding="utf-8") as f:
        for line in f:
            rows.append(json.loads(line))
            if len(rows) == n:
                break
    return rows


@pytest.mark.parametrize("seq_len", [512, 48, 20])
def test_instruction_graph_prompt_equals_python(tokenizer, seq_len):
    rows = dolly_rows(24)
    inputs = [{"instruction": r["instruction"], "context": r["context"]} for r in rows]
    assert any(not x["context"] for x in inputs) and any(x["context"] for x in inputs)
    inputs += [
        {"instruction": "Name a colour.", "context": ""},  # empty context: no Context section
        {"instruction": "Name a colour.", "context": " \n\u3000"},  # blank: no section either
        {"instruction": "Zoë's café 🤖 serves " * 30, "context": "中文 日本語 " * 40},
    ]
    want, got = python_and_graph(tokenizer, "instruction_tuning", inputs, seq_len)
    assert got == want
    if seq_len < 512:
        assert any(len(w) == seq_len for w in want)  # some were cut


@pytest.mark.parametrize("seq_len", [128, 40])
def test_entailment_graph_prompt_equals_python(tokenizer, seq_len):
    with open(shared("glue_rte", "dev.tsv"), encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:24]
    inputs = [{"premise": r["sentence1"], "hypothesis": r["sentence2"]} for r in rows]
    long = "The committee, after a long debate in the old hall, voted. " * 20
    inputs += [
        {"premise": long, "hypothesis": "The committee voted."},  # the premise is cut
        {"premise": "It rained.", "hypothesis": "It was dry. " * 60},  # both are cut
        {"premise": "🤖🎉" * 50, "hypothesis": "Robots."},  # a cut inside a character
    ]
    want, got = python_and_graph(tokenizer, "entailment_tuning", inputs, seq_len)
    assert got == want
    assert len(want[-3]) == seq_len and all(len(w) <= seq_len for w in want)


def test_the_other_tasks_graph_prompts_equal_python(tokenizer):
    texts = ["i feel so happy today", "Zoë's café 🤖 " * 40, "", "a\n\n"]
    for name, inputs in (
        ("classification_tuning", [{"text": t} for t in texts]),
        ("text_tuning", [{"text": t} for t in texts]),
        ("dictionary_tuning", [{"word": w} for w in ("cat", "Zoë", "run up")]),
        ("style_tuning", [{"text": "A: hi\nB: hello\nA: how are you?\n", "speaker": "B"}]),
        ("style_tuning", [{"text": "A: hi", "speaker": ""}, {"text": "x", "speaker": "Ann"}]),
    ):
        want, got = python_and_graph(tokenizer, name, inputs, 32)
        assert got == want, name
