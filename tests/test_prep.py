"""The prep engine and the TFRecord contract, through the instruction_tuning task."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from gpt2_tf import GPT2Tokenizer
from gpt2_tf.data.prep import PrepOptions, find_row, prepare
from gpt2_tf.data.readers import RowError
from gpt2_tf.data.records import load_tfrecords, read_metadata
from gpt2_tf.data.tasks import get_task
from gpt2_tf.data.tasks.instruction import BUNDLED, render_prompt
from tests.conftest import shared

EOT = 50256
TASK = get_task("instruction_tuning")
ROWS = [
    {
        "instruction": "Name a primary colour.",
        "context": "",
        "response": "Red.",
        "category": "open_qa",
    },
    {
        "instruction": "Who wrote it?",
        "context": "The poem was written by Zoë in 1901.",
        "response": "Zoë wrote it.",
        "category": "closed_qa",
    },
    {"instruction": "Say a lot.", "context": "", "response": "word " * 200, "category": "open_qa"},
]


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return str(path)


def run(tokenizer, tmp_path, rows=ROWS, name="out", **kw):
    src = rows if isinstance(rows, str) else write_jsonl(tmp_path / f"{name}.jsonl", rows)
    task_opts = {"input_jsonl": src, "categories": kw.pop("categories", [])}
    opts = PrepOptions(
        output_dir=str(tmp_path / name), seq_len=kw.pop("seq_len", 64), task=task_opts, **kw
    )
    return prepare(TASK, tokenizer, opts), opts.output_dir


def records(folder, split):
    """(input_ids, length, prompt_length, source_index) of each stored example, in file order."""
    spec = {"input_ids": tf.io.VarLenFeature(tf.int64)}
    spec.update(
        {
            k: tf.io.FixedLenFeature([], tf.int64)
            for k in ("length", "prompt_length", "source_index")
        }
    )
    out = []
    for f in sorted(glob.glob(os.path.join(folder, f"{split}-*.tfrecord"))):
        for raw in tf.data.TFRecordDataset(f):
            ex = tf.io.parse_single_example(raw, spec)
            out.append(
                (
                    tf.sparse.to_dense(ex["input_ids"]).numpy().tolist(),
                    int(ex["length"]),
                    int(ex["prompt_length"]),
                    int(ex["source_index"]),
                )
            )
    return out


def test_exact_ids_lengths_and_weights(tokenizer, reference, tmp_path):
    meta, folder = run(tokenizer, tmp_path)  # 3 rows: 80/10/10 rounds to all-train
    assert meta["rows"] == {"read": 3, "written": 2, "dropped": {"response_too_long": 1}}
    examples = {r[3]: r for s in meta["splits"] for r in records(folder, s)}
    for index in (0, 1):
        row = ROWS[index]
        prompt = reference.encode(render_prompt(row["instruction"], row["context"]))
        target = reference.encode(row["response"]) + [EOT]
        ids, length, prompt_length, _ = examples[index]
        assert ids == prompt + target + [EOT] * (64 - len(prompt) - len(target))
        assert (length, prompt_length) == (len(prompt) + len(target), len(prompt))
    assert "### Context:\nThe poem" in tokenizer.decode(examples[1][0][: examples[1][2]])
    assert "### Context" not in tokenizer.decode(examples[0][0][: examples[0][2]])


def test_reader_gives_next_token_targets_and_response_only_weights(tokenizer, tmp_path):
    _, folder = run(tokenizer, tmp_path)
    stored = records(folder, "train")
    batches = list(load_tfrecords(folder, "train", batch_size=1).unbatch())
    assert len(batches) == len(stored) == 2
    for (x, y, w), (ids, length, p, _) in zip(batches, stored):
        ids = np.array(ids)
        np.testing.assert_array_equal(x["token_ids"].numpy(), ids)
        np.testing.assert_array_equal(x["padding_mask"].numpy(), np.arange(64) < length)
        np.testing.assert_array_equal(y.numpy()[:-1], ids[1:])
        expected = np.zeros(64)
        expected[p - 1 : length - 1] = 1.0  # positions whose next token is response or its EOT
        np.testing.assert_array_equal(w.numpy(), expected)


def test_pad_equal_to_eot_is_still_known_by_length(tokenizer, tmp_path):
    rows = [
        {"instruction": "Repeat <|endoftext|> back.", "context": "", "response": "<|endoftext|>"}
    ]
    meta, folder = run(tokenizer, tmp_path, rows=rows)
    ((ids, length, p, _),) = records(folder, "train")
    assert (
        tokenizer.decode(ids[p:length]) == "<|endoftext|><|endoftext|>"
    )  # text, then the real EOT
    assert ids[length - 1] == EOT and ids[length - 2] != EOT


def test_context_is_shortened_before_anything_is_dropped(tokenizer, tmp_path):
    rows = [
        {
            "instruction": "Summarize.",
            "context": "Long context sentence. " * 60,
            "response": "Short.",
        }
    ]
    meta, folder = run(tokenizer, tmp_path, rows=rows, seq_len=48)
    assert meta["rows"]["written"] == 1 and meta["truncated"] == 1
    ((ids, length, p, _),) = records(folder, "train")
    assert length <= 48 and tokenizer.decode(ids[p:length]) == "Short.<|endoftext|>"
    assert "### Context:\nLong context" in tokenizer.decode(ids[:p])


def test_categories_filter_is_counted(tokenizer, tmp_path):
    meta, _ = run(tokenizer, tmp_path, categories=["closed_qa"])
    assert meta["rows"] == {"read": 3, "written": 1, "dropped": {"category_filtered": 2}}


@pytest.mark.parametrize(
    "bad_line, pattern, reason",
    [
        (
            '{"instruction": "x", "response": ',
            r"bad\.jsonl: line 2: not valid JSON",
            "malformed_json",
        ),
        (
            '{"instruction": "x"}',
            r"bad\.jsonl: line 2: field 'response': required field is missing",
            "missing_field",
        ),
        (
            '{"instruction": "  ", "response": "y"}',
            r"line 2: field 'instruction': required field is empty",
            "empty_field",
        ),
        (
            '{"instruction": 5, "response": "y"}',
            r"line 2: field 'instruction': expected text",
            "bad_field",
        ),
    ],
)
def test_bad_rows_stop_or_are_counted(tokenizer, tmp_path, bad_line, pattern, reason):
    lines = [json.dumps(ROWS[0]), bad_line, json.dumps(ROWS[1])]
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(RowError, match=pattern):
        run(tokenizer, tmp_path, rows=path)
    meta, _ = run(tokenizer, tmp_path, rows=path, name="skip", on_error="skip")
    assert meta["rows"] == {"read": 3, "written": 2, "dropped": {reason: 1}}


def test_non_utf8_line_names_file_and_line(tokenizer, tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        json.dumps(ROWS[0]).encode()
        + b"\n"
        + '{"instruction": "caf\xe9"}'.encode("latin-1")
        + b"\n"
    )
    with pytest.raises(RowError, match=r"latin1\.jsonl: line 2: not UTF-8"):
        run(tokenizer, tmp_path, rows=str(path))
    meta, _ = run(tokenizer, tmp_path, rows=str(path), name="skip", on_error="skip")
    assert meta["rows"]["dropped"] == {"not_utf8": 1}


def test_existing_output_needs_overwrite(tokenizer, tmp_path):
    run(tokenizer, tmp_path)
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        run(tokenizer, tmp_path)
    meta, _ = run(tokenizer, tmp_path, overwrite=True)
    assert meta["rows"]["written"] == 2


def test_deterministic_and_seeded(tokenizer, tmp_path):
    src = shared("dolly", "dolly_first743.jsonl")
    _, a = run(tokenizer, tmp_path, rows=src, name="a", seq_len=256, num_shards=2)
    _, b = run(tokenizer, tmp_path, rows=src, name="b", seq_len=256, num_shards=2)
    _, c = run(tokenizer, tmp_path, rows=src, name="c", seq_len=256, num_shards=2, seed=1)
    names = sorted(os.listdir(a))
    assert names == sorted(os.listdir(b)) and len(names) == 7  # 3 splits x 2 shards + metadata
    for name in names:
        assert open(os.path.join(a, name), "rb").read() == open(os.path.join(b, name), "rb").read()
    test_a = {r[3] for r in records(a, "test")}
    assert test_a != {r[3] for r in records(c, "test")}


def test_real_dolly_sample(tokenizer, tmp_path):
    src = shared("dolly", "dolly_first743.jsonl")
    meta, folder = run(tokenizer, tmp_path, rows=src, seq_len=512, num_shards=2)
    rows = meta["rows"]
    assert rows["read"] == 743 and rows["read"] == rows["written"] + sum(rows["dropped"].values())
    assert sum(c["examples"] for c in meta["splits"].values()) == rows["written"]
    # an exact 80/10/10 split of the 743 rows, before too-long rows are dropped
    raw = [json.loads(line) for line in open(src, encoding="utf-8")]
    seen = set()
    for split in ("train", "validation", "test"):
        for ids, length, p, index in records(folder, split):
            assert length <= 512 and ids[length:] == [EOT] * (512 - length)
            assert tokenizer.decode(ids[p:length]) == raw[index]["response"] + "<|endoftext|>"
            seen.add(index)
    assert len(seen) == rows["written"]
    assert find_row(TASK, {"input_jsonl": src}, 42).line == 43


def test_reader_checks_seq_len_and_tokenizer(tokenizer, tmp_path):
    _, folder = run(tokenizer, tmp_path)
    with pytest.raises(
        ValueError, match="prepared with seq_len=64, the caller expects seq_len=128"
    ):
        load_tfrecords(folder, "train", 2, seq_len=128)
    other = GPT2Tokenizer(tokenizer.encoder, tokenizer.merges[:-1], source="other")
    with pytest.raises(ValueError, match="prepared with another tokenizer"):
        load_tfrecords(folder, "train", 2, tokenizer=other)
    assert next(iter(load_tfrecords(folder, "train", 2, seq_len=64, tokenizer=tokenizer)))
    with pytest.raises(FileNotFoundError, match="no TFRecord files for split 'dev'"):
        load_tfrecords(folder, "dev", 2)


def test_bundled_sample_offline(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    opts = PrepOptions(output_dir=str(tmp_path / "b"), seq_len=512, task={"input_jsonl": None})
    meta = prepare(TASK, tokenizer, opts)
    assert meta["source"]["bundled_sample"] is True
    files = meta["tokenizer"]["files"]  # the hashes tiktoken pins for OpenAI's two files
    assert files["encoder.json"].startswith("196139668be6") and files["vocab.bpe"].startswith(
        "1ce1664773c5"
    )
    assert meta["source"]["files"][0]["path"] == BUNDLED
    assert meta["rows"]["read"] == 80 and meta["rows"]["written"] == 80
    assert {s: c["examples"] for s, c in meta["splits"].items()} == {
        "test": 8,
        "train": 64,
        "validation": 8,
    }
    assert read_metadata(str(tmp_path / "b"))["splits"] == meta["splits"]
