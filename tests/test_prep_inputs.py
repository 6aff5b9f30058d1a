"""Hostile but fair inputs to every task's prep: each gets a clear error naming the file (and
line and field), or is read as meant, on real rows from ../shared/data."""

import codecs
import json
import os
import shutil

import pytest

from gpt2_tf.data.prep import PrepOptions, prepare
from gpt2_tf.data.readers import RowError
from gpt2_tf.data.records import read_metadata
from gpt2_tf.data.tasks import TASKS, get_task
from tests.conftest import shared

BOM = codecs.BOM_UTF8


def run(tokenizer, task, out, seq_len=None, **options):
    spec = get_task(task)
    opts = PrepOptions(str(out), seq_len or spec.seq_len, task=options)
    return prepare(spec, tokenizer, opts)


def lines(path, n=None) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()[:n]


def write(path, text: str, bom=False) -> str:
    with open(path, "wb") as f:
        f.write((BOM if bom else b"") + text.encode("utf-8"))
    return str(path)


def emotion_copy(folder, bom=False, **replace) -> str:
    """The emotion folder, each split cut to its first 300 lines (header kept), with files
    replaced by the texts given."""
    os.makedirs(folder, exist_ok=True)
    for name in ("train.txt", "val.txt", "test.txt"):
        text = replace.get(name.split(".")[0], "\n".join(lines(shared("emotion", name), 300)))
        write(os.path.join(folder, name), text + "\n", bom)
    return str(folder)


# ---- a UTF-8 byte-order mark is read as nothing --------------------------------------------------
def test_every_reader_accepts_a_byte_order_mark(tokenizer, tmp_path):
    # emotion: the BOM hid the header ("unknown label 'label_name'")
    meta = run(
        tokenizer,
        "classification_tuning",
        tmp_path / "e",
        input=emotion_copy(tmp_path / "emotion", bom=True),
    )
    assert meta["rows"]["read"] == 3 * 299 and meta["rows"]["dropped"] == {}
    # RTE: the BOM renamed the first column ("missing field")
    rte = tmp_path / "rte"
    os.makedirs(rte)
    for name in ("train.tsv", "dev.tsv"):
        write(rte / name, "\n".join(lines(shared("glue_rte", name), 200)) + "\n", bom=True)
    meta = run(tokenizer, "entailment_tuning", tmp_path / "r", input_dir=str(rte))
    assert meta["rows"]["dropped"] == {} and meta["rows"]["written"] == 2 * 199
    # chat: U+FEFF stayed in the first utterance, and so in the training text
    chat = write(
        tmp_path / "dialogs.txt",
        "\n".join(lines(shared("chat_dialogs", "dialogs.txt"), 300)) + "\n",
        bom=True,
    )
    run(tokenizer, "style_tuning", tmp_path / "c", chat_file=chat, target_speaker="B")
    from gpt2_tf.data.tasks.style import turns

    first = next(turns({"chat_file": chat, "chat_format": "tsv"}))
    assert first.text == "hi, how are you doing?"
    # JSONL (Dolly, Wiktionary)
    dolly = write(
        tmp_path / "d.jsonl",
        "\n".join(lines(shared("dolly", "dolly_first743.jsonl"), 100)) + "\n",
        bom=True,
    )
    assert (
        run(tokenizer, "instruction_tuning", tmp_path / "i", input_jsonl=dolly)["rows"][
            "dropped"
        ].get("malformed_json")
        is None
    )


# ---- a huge field, a bad line early in a chat --------------------------------------------------
def test_a_one_megabyte_rte_field_is_read(tokenizer, tmp_path):
    """`_csv.Error: field larger than field limit (131072)`, with no file or line, even with
    --on_error=skip; now the field is read (and cut to fit, as any long premise)."""
    rte = tmp_path / "rte"
    os.makedirs(rte)
    train = lines(shared("glue_rte", "train.tsv"), 50)
    premise, hypothesis, label, idx = train[1].split("\t")
    train[1] = "\t".join([premise + " word" * 200_000, hypothesis, label, idx])
    write(rte / "train.tsv", "\n".join(train) + "\n")
    shutil.copy(shared("glue_rte", "dev.tsv"), rte / "dev.tsv")
    meta = run(tokenizer, "entailment_tuning", tmp_path / "r", input_dir=str(rte))
    assert meta["rows"]["written"] == 49 + 277 and meta["truncated"] >= 1


def test_one_bad_line_early_in_a_chat_does_not_defeat_format_detection(tokenizer, tmp_path):
    chat = lines(shared("chat_dialogs", "dialogs.txt"), 300)
    chat.insert(3, "a line with no tab at all")
    path = write(tmp_path / "dialogs.txt", "\n".join(chat) + "\n")
    spec = get_task("style_tuning")
    opts = PrepOptions(
        str(tmp_path / "c"), 256, on_error="skip", task={"chat_file": path, "target_speaker": "B"}
    )
    meta = prepare(spec, tokenizer, opts)
    assert "chat format: tsv (detected)" in meta["notes"]
    assert meta["rows"]["dropped"].get("wrong_column_count") == 1
    with pytest.raises(RowError, match=r"dialogs\.txt: line 4: 1 tab-separated columns"):
        run(tokenizer, "style_tuning", tmp_path / "c2", chat_file=path, target_speaker="B")


# ---- inputs with no rows, and preps that would write nothing to train on -------------------------
@pytest.mark.parametrize("content", ["", "text;label_name\n", "\n\n"])
def test_an_input_file_with_no_rows_is_an_error_naming_it(tokenizer, tmp_path, content):
    folder = emotion_copy(tmp_path / "emotion", val=content.rstrip("\n"))
    with pytest.raises(ValueError, match=r"val\.txt: no rows \(the file is empty or holds only"):
        run(tokenizer, "classification_tuning", tmp_path / "out", input=folder)
    assert not os.path.exists(tmp_path / "out")  # nothing written
    if not content.strip():  # JSONL has no header: an empty or blank file
        empty = write(tmp_path / "empty.jsonl", content)
        with pytest.raises(ValueError, match=r"empty\.jsonl: no rows"):
            run(tokenizer, "instruction_tuning", tmp_path / "out2", input_jsonl=empty)


def test_a_prep_with_nothing_left_to_train_on_is_an_error(tokenizer, tmp_path):
    bad = tmp_path / "bad.jsonl"
    rows = [json.loads(x) for x in lines(shared("dolly", "dolly_first743.jsonl"), 20)]
    write(bad, "".join(json.dumps({**r, "response": ""}) + "\n" for r in rows))
    spec = get_task("instruction_tuning")
    opts = PrepOptions(str(tmp_path / "out"), 512, on_error="skip", task={"input_jsonl": str(bad)})
    with pytest.raises(
        ValueError,
        match="no training examples: 20 rows read, 0 written, dropped by reason: empty_field 20",
    ):
        prepare(spec, tokenizer, opts)


# ---- --seq_len too small for the task's template ------------------------------------------------
@pytest.mark.parametrize("task", sorted(TASKS))
def test_seq_len_below_the_task_minimum_is_refused(tokenizer, tmp_path, task):
    spec = get_task(task)
    least = spec.min_seq_len(tokenizer)
    for seq_len in (-3, 0, 1, least - 1):
        if seq_len >= least:
            continue
        with pytest.raises(
            ValueError,
            match=f"--seq_len {seq_len} is too small for {task}: .* use at least {least}",
        ):
            prepare(spec, tokenizer, PrepOptions(str(tmp_path / "out"), seq_len, task={}))
    assert least <= spec.seq_len


def test_a_minimal_row_fits_the_minimum(tokenizer, tmp_path):
    """At its minimum seq_len, a task still writes a one-word example whole."""
    spec = get_task("instruction_tuning")
    least = spec.min_seq_len(tokenizer)
    path = write(
        tmp_path / "one.jsonl",
        json.dumps({"instruction": "a", "context": "", "response": "a"}) + "\n",
    )
    meta = prepare(
        spec, tokenizer, PrepOptions(str(tmp_path / "out"), least, task={"input_jsonl": path})
    )
    assert meta["rows"]["written"] == 1 and read_metadata(str(tmp_path / "out"))["seq_len"] == least
