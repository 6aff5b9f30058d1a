"""dictionary_tuning: cleaning, exact ids and masks, truncation, the split by word, bad rows."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from gpt2_tf.data.prep import PrepOptions, prepare
from gpt2_tf.data.readers import RowError
from gpt2_tf.data.records import load_tfrecords, read_metadata, split_files
from gpt2_tf.data.tasks import get_task
from gpt2_tf.data.tasks.dictionary import clean
from tests.conftest import shared

EOT = 50256
TASK = get_task("dictionary_tuning")
SENSES = [
    {
        "word": "jab",
        "pos": "Noun",
        "definition": "(boxing) A short <i>straight</i>  punch.",
        "examples": ["He threw a jab &mdash; fast."],
    },
    {"word": "jab", "pos": "Verb", "definition": "To poke quickly.", "examples": []},
    {
        "word": "Zoë",
        "pos": "Name",
        "definition": "A given name.",
        "examples": ["", " Zoë  smiled. "],
    },
]


# ---- helpers, also used by test_prep_style.py ----------------------------------------------------
def write_lines(path, lines):
    """A file of `lines`: dicts as JSON, str as text, bytes as they are (for bad UTF-8)."""
    with open(path, "wb") as f:
        for line in lines:
            if isinstance(line, dict):
                line = json.dumps(line, ensure_ascii=False)
            f.write((line if isinstance(line, bytes) else line.encode("utf-8")) + b"\n")
    return str(path)


def records(folder, split):
    """A split's examples as arrays: what the TFRecords hold, and what `load_tfrecords` makes."""
    seq_len = read_metadata(folder)["seq_len"]
    spec = {"input_ids": tf.io.FixedLenFeature([seq_len], tf.int64)}
    for key in ("length", "prompt_length", "source_index"):
        spec[key] = tf.io.FixedLenFeature([], tf.int64)
    ds = tf.data.TFRecordDataset(split_files(folder, split))
    batches = list(ds.map(lambda r: tf.io.parse_single_example(r, spec)).batch(1 << 16))
    out = {k: np.concatenate([b[k].numpy() for b in batches]) for k in spec}
    loaded = list(load_tfrecords(folder, split, batch_size=1 << 16))
    out["token_ids"] = np.concatenate([x["token_ids"].numpy() for x, _, _ in loaded])
    out["padding_mask"] = np.concatenate([x["padding_mask"].numpy() for x, _, _ in loaded])
    out["y"] = np.concatenate([y.numpy() for _, y, _ in loaded])
    out["weight"] = np.concatenate([w.numpy() for _, _, w in loaded])
    return out


def example(recs, i):
    """Example `i` of `records(...)`: (ids without padding, prompt_length, source_index)."""
    n = int(recs["length"][i])
    return (
        recs["input_ids"][i, :n].tolist(),
        int(recs["prompt_length"][i]),
        int(recs["source_index"][i]),
    )


def assert_example(recs, i, prompt_ids, target_ids):
    """Exact ids, length, prompt_length, padding, next-token y and the loss weights of one."""
    ids, seq_len = prompt_ids + target_ids, recs["input_ids"].shape[1]
    n, p = len(ids), len(prompt_ids)
    assert example(recs, i)[:2] == (ids, p)
    assert recs["length"][i] == n
    padded = ids + [EOT] * (seq_len - n)
    assert recs["input_ids"][i].tolist() == padded
    assert recs["token_ids"][i].tolist() == padded
    assert recs["padding_mask"][i].tolist() == [1] * n + [0] * (seq_len - n)
    assert recs["y"][i].tolist() == padded[1:] + [EOT]
    # Position t carries loss when token t+1 is a target token: t = p-1 .. n-2.
    assert recs["weight"][i].tolist() == [float(p - 1 <= t <= n - 2) for t in range(seq_len)]


# ---- the task ------------------------------------------------------------------------------------
def run(tokenizer, tmp_path, lines=SENSES, direction="forward", seq_len=64, name="out", **kw):
    src = lines if isinstance(lines, str) else write_lines(tmp_path / f"{name}.jsonl", lines)
    opts = PrepOptions(
        output_dir=str(tmp_path / name),
        seq_len=seq_len,
        task={"input_jsonl": src, "direction": direction},
        **kw,
    )
    return prepare(TASK, tokenizer, opts), opts.output_dir


@pytest.mark.parametrize(
    "raw, want",
    [
        ("The 10<sup>th</sup> letter", "The 10th letter"),
        ("formula C<sub>12</sub>H<sub>15</sub>N.", "formula C12H15N."),
        ("a &mdash; b &deg;", "a — b °"),
        ("jammy bastard&emsp; jammy sod", "jammy bastard jammy sod"),
        ('"en"\n\n- Give the key a jiggle.', '"en" - Give the key a jiggle.'),
        ("an escaped &lt;b&gt; stays", "an escaped <b> stays"),
        ("  a   <i class='x'>b</i>\t ", "a b"),
        ("1 < 2 > 0", "1 < 2 > 0"),
    ],
)
def test_clean(raw, want):
    assert clean(raw) == want


def test_forward_exact_ids(tokenizer, reference, tmp_path):
    meta, folder = run(tokenizer, tmp_path)  # two words: 80/10/10 rounds to all-train
    assert meta["rows"] == {"read": 3, "written": 3, "dropped": {}}
    assert meta["truncated"] == 0 and list(meta["splits"]) == ["train"]
    recs = records(folder, "train")
    targets = [
        " (boxing) A short straight punch.\nExample: He threw a jab — fast.",
        " To poke quickly.",
        " A given name.\nExample: Zoë smiled.",  # the first non-empty example
    ]
    for i, (word, target) in enumerate(zip(["jab", "jab", "Zoë"], targets)):
        prompt = reference.encode(f"Word: {word}\nDefinition:")
        assert_example(recs, i, prompt, reference.encode(target) + [EOT])
        assert example(recs, i)[2] == i


def test_reverse_exact_ids(tokenizer, reference, tmp_path):
    meta, folder = run(tokenizer, tmp_path, direction="reverse")
    recs = records(folder, "train")
    definitions = ["(boxing) A short straight punch.", "To poke quickly.", "A given name."]
    for i, (word, definition) in enumerate(zip(["jab", "jab", "Zoë"], definitions)):
        prompt = reference.encode(f"Definition: {definition}\nWord:")
        assert_example(recs, i, prompt, reference.encode(f" {word}") + [EOT])


def test_both_gives_two_examples_per_sense(tokenizer, reference, tmp_path):
    meta, folder = run(tokenizer, tmp_path, direction="both")
    assert meta["rows"] == {"read": 6, "written": 6, "dropped": {}}
    recs = records(folder, "train")
    assert [example(recs, i)[2] for i in range(6)] == list(range(6))
    assert_example(
        recs,
        2,
        reference.encode("Word: jab\nDefinition:"),
        reference.encode(" To poke quickly.") + [EOT],
    )
    assert_example(
        recs,
        3,
        reference.encode("Definition: To poke quickly.\nWord:"),
        reference.encode(" jab") + [EOT],
    )


def test_too_long_drops_the_example_then_shortens(tokenizer, reference, tmp_path):
    long_def = "A " + "very " * 60 + "long definition."
    senses = [
        {"word": "kayak", "definition": "A small boat.", "examples": ["word " * 40]},
        {"word": "kelp", "definition": long_def, "examples": ["Kelp grows."]},
        {"word": "k" * 200, "definition": "Too long a word.", "examples": []},
    ]
    meta, folder = run(tokenizer, tmp_path, senses, seq_len=24)
    assert meta["rows"] == {"read": 3, "written": 2, "dropped": {"too_long": 1}}
    assert meta["truncated"] == 2
    recs = records(folder, "train")
    prompt = reference.encode("Word: kayak\nDefinition:")
    assert_example(recs, 0, prompt, reference.encode(" A small boat.") + [EOT])  # no example
    ids, p, _ = example(recs, 1)
    assert len(ids) <= 24 and ids[:p] == reference.encode("Word: kelp\nDefinition:")
    assert ids[-1] == EOT and long_def.startswith(tokenizer.decode(ids[p:-1])[1:])

    meta, folder = run(tokenizer, tmp_path, senses, direction="reverse", seq_len=24, name="rev")
    assert meta["rows"]["dropped"] == {"too_long": 1} and meta["truncated"] == 1
    ids, p, _ = example(records(folder, "train"), 1)
    assert len(ids) <= 24 and ids[p:] == reference.encode(" kelp") + [EOT]
    prompt = tokenizer.decode(ids[:p])
    assert prompt.startswith("Definition: A very") and prompt.endswith("\nWord:")


def test_split_keeps_every_word_in_one_split(tokenizer, tmp_path):
    senses = [
        {"word": f"{'Kw' if i % 2 else 'kw'}{w}", "definition": f"Sense {i} of {w}."}
        for w in range(30)
        for i in range(3)
    ]  # 30 words, each with 3 senses, one of them capitalized: "kw7" and "Kw7" are one word
    meta, folder = run(tokenizer, tmp_path, senses, direction="both", seed=3)
    assert {s: c["examples"] for s, c in meta["splits"].items()} == {
        "train": 144,
        "validation": 18,
        "test": 18,
    }  # 24 / 3 / 3 words, 3 senses, 2 directions
    split_of = {}
    for split in meta["splits"]:
        recs = records(folder, split)
        for i in range(len(recs["length"])):
            word = senses[example(recs, i)[2] // 2]["word"].casefold()
            assert split_of.setdefault(word, split) == split


BAD_LINES = [
    ("{not json", "malformed_json", None),
    ('["a list"]', "malformed_json", None),
    ({"definition": "No word."}, "missing_field", "word"),
    ({"word": "  ", "definition": "Empty word."}, "empty_field", "word"),
    ({"word": "jib", "definition": ""}, "empty_field", "definition"),
    ({"word": "jib", "definition": "<br/>"}, "empty_field", "definition"),
    ({"word": "jib", "definition": 3}, "bad_field", "definition"),
    ({"word": "jib", "definition": "A sail.", "examples": "not a list"}, "bad_field", "examples"),
    (b'{"word": "caf\xe9", "definition": "Latin-1, not UTF-8."}', "not_utf8", None),
]


@pytest.mark.parametrize("line, reason, field", BAD_LINES)
def test_bad_row_raises_with_file_line_and_field(tokenizer, tmp_path, line, reason, field):
    path = write_lines(tmp_path / "bad.jsonl", [SENSES[0], line])
    with pytest.raises(RowError) as err:
        run(tokenizer, tmp_path, path, direction="both")
    assert (err.value.file, err.value.line, err.value.field, err.value.reason) == (
        path,
        2,
        field,
        reason,
    )
    assert str(err.value).startswith(f"{path}: line 2")
    assert field is None or f"field {field!r}" in str(err.value)


def test_bad_rows_skipped_and_counted_once_per_line(tokenizer, tmp_path):
    lines = [SENSES[0], *(line for line, _, _ in BAD_LINES), SENSES[1]]
    meta, _ = run(tokenizer, tmp_path, lines, direction="both", on_error="skip")
    assert meta["rows"] == {
        "read": 2 * 2 + len(BAD_LINES),
        "written": 4,
        "dropped": {
            "bad_field": 2,
            "empty_field": 3,
            "malformed_json": 2,
            "missing_field": 1,
            "not_utf8": 1,
        },
    }


def test_no_input_is_a_clear_error(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="--input_jsonl"):
        run(tokenizer, tmp_path, lines="")


# ---- the real data -------------------------------------------------------------------------------
def expected_text(sense: dict, direction: str) -> tuple[str, str]:
    """(prompt, target) of a sense, written out from the task's description."""
    word, definition = sense["word"].strip(), clean(sense["definition"])
    if direction == "reverse":
        return f"Definition: {definition}\nWord:", f" {word}"
    examples = [e for e in map(clean, sense["examples"]) if e]
    return f"Word: {word}\nDefinition:", f" {definition}" + (
        f"\nExample: {examples[0]}" if examples else ""
    )


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["forward", "both"])
def test_real_wiktionary(tokenizer, reference, tmp_path, direction):
    path = shared("wiktionary", "flat_senses.jsonl")
    with open(path, encoding="utf-8") as f:
        senses = [json.loads(line) for line in f]
    per_sense = 2 if direction == "both" else 1
    meta, folder = run(tokenizer, tmp_path, path, direction=direction, seq_len=128)
    rows, dropped = meta["rows"], sum(meta["rows"]["dropped"].values())
    assert len(senses) == 13560 and rows["read"] == per_sense * len(senses)
    assert rows["read"] == rows["written"] + dropped
    assert rows["written"] == per_sense * len(senses) - dropped
    assert sum(s["examples"] for s in meta["splits"].values()) == rows["written"]
    words_in, mismatches, checked = {}, 0, 0
    for split in ("train", "validation", "test"):
        recs = records(folder, split)
        assert recs["length"].max() <= 128 and (recs["prompt_length"] < recs["length"]).all()
        for i in range(len(recs["length"])):
            ids, p, index = example(recs, i)
            sense = senses[index // per_sense]
            direction_i = ("forward", "reverse")[index % 2] if per_sense == 2 else direction
            words_in.setdefault(sense["word"].strip().casefold(), set()).add(split)
            prompt, target = expected_text(sense, direction_i)
            if tokenizer.decode(ids[p:]) != target + "<|endoftext|>":
                mismatches += 1  # only a truncated example may differ
            elif checked < 300:  # the exact ids of a sample, against tiktoken
                checked += 1
                assert ids == reference.encode(prompt) + reference.encode(target) + [EOT]
    assert mismatches <= meta["truncated"]
    assert all(len(splits) == 1 for splits in words_in.values())  # no word in two splits
    words = len({s["word"].strip().casefold() for s in senses})
    assert len(words_in) == words == 8157  # every word has examples (nothing is dropped here)
    counts = {s: sum(1 for w in words_in.values() if s in w) for s in ("validation", "test")}
    assert counts == {"validation": round(words * 0.1), "test": round(words * 0.1)}
    assert os.path.exists(os.path.join(folder, "metadata.json"))
