"""classification_tuning prep: exact ids and labels, the emotion files, bad rows."""

import collections
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from gpt2_tf.core import hub
from gpt2_tf.data.prep import PrepOptions, find_row, prepare
from gpt2_tf.data.readers import RowError
from gpt2_tf.data.records import load_tfrecords
from gpt2_tf.data.tasks import get_task
from gpt2_tf.data.tasks.classification import LABELS, with_label_names
from tests.conftest import shared

EOT = 50256
TASK = get_task("classification_tuning")
TRAIN = ["i feel great;joy", "im sad; really; truly;sadness", "zoë is scared;fear"]


def write_folder(path, train=TRAIN, val=("so loved;love",), test=("what a surprise;surprise",)):
    """An emotion-style folder: header line, then `text;label` lines."""
    os.makedirs(path, exist_ok=True)
    for name, lines in (("train.txt", train), ("val.txt", val), ("test.txt", test)):
        with open(os.path.join(path, name), "wb") as f:
            f.write(b"text;label_name\n")
            for line in lines:
                f.write(line if isinstance(line, bytes) else line.encode() + b"\n")
    return str(path)


def run(tokenizer, tmp_path, task_options, name="out", spec=TASK, **kw):
    opts = PrepOptions(
        output_dir=str(tmp_path / name), seq_len=kw.pop("seq_len", 16), task=task_options, **kw
    )
    return prepare(spec, tokenizer, opts), opts.output_dir


def records(folder, split):
    """(input_ids, length, label, source_index) of each stored example, in file order."""
    spec = {"input_ids": tf.io.VarLenFeature(tf.int64)}
    spec.update(
        {k: tf.io.FixedLenFeature([], tf.int64) for k in ("length", "label", "source_index")}
    )
    out = []
    for f in sorted(glob.glob(os.path.join(folder, f"{split}-*.tfrecord"))):
        for raw in tf.data.TFRecordDataset(f).batch(4096):
            ex = tf.io.parse_example(raw, spec)
            ids = tf.sparse.to_dense(ex["input_ids"]).numpy().tolist()
            cols = [ex[k].numpy().tolist() for k in ("length", "label", "source_index")]
            out += list(zip(ids, *cols))
    return out


def check_batches(folder, split, stored, seq_len):
    """load_tfrecords gives the stored ids, a mask from the length, the label and weight 1."""
    batches = list(load_tfrecords(folder, split, batch_size=1).unbatch())
    assert len(batches) == len(stored)
    for (x, y, w), (ids, length, label, _) in zip(batches, stored):
        np.testing.assert_array_equal(x["token_ids"].numpy(), ids)
        np.testing.assert_array_equal(x["padding_mask"].numpy(), np.arange(seq_len) < length)
        assert int(y) == label and float(w) == 1.0


def test_folder_exact_ids_labels_and_splits(tokenizer, reference, tmp_path):
    meta, folder = run(tokenizer, tmp_path, {"input": write_folder(tmp_path / "emo")})
    assert meta["rows"] == {"read": 5, "written": 5, "dropped": {}}
    assert {s: c["examples"] for s, c in meta["splits"].items()} == {
        "test": 1,
        "train": 3,
        "validation": 1,
    }
    assert meta["label_names"] == list(LABELS) and meta["template"] == "{text}<|endoftext|>"
    expected = {  # source_index -> (text, label id): the header is not a row
        0: ("i feel great", 1),
        1: ("im sad; really; truly", 0),
        2: ("zoë is scared", 4),
        3: ("so loved", 2),
        4: ("what a surprise", 5),
    }
    for split in ("train", "validation", "test"):
        stored = records(folder, split)
        for ids, length, label, index in stored:
            text, want_label = expected[index]
            want = reference.encode(text) + [EOT]
            assert ids == want + [EOT] * (16 - len(want)) and length == len(want)
            assert label == want_label
        check_batches(folder, split, stored, 16)
    assert [r[3] for r in records(folder, "train")] == [0, 1, 2]
    assert find_row(TASK, {"input": str(tmp_path / "emo")}, 1).line == 3


def test_long_text_is_cut_and_still_ends_in_eot(tokenizer, reference, tmp_path):
    text = "i feel " + "very " * 40 + "happy"
    meta, folder = run(
        tokenizer, tmp_path, {"input": write_folder(tmp_path / "e", [f"{text};joy"])}, seq_len=8
    )
    assert meta["truncated"] == 1
    ((ids, length, label, _),) = records(folder, "train")
    assert ids == reference.encode(text)[:7] + [EOT] and length == 8 and label == 1


def test_jsonl_ids_or_names_split_80_10_10(tokenizer, reference, tmp_path):
    rows = [
        {"text": f"text number {i}", "label": i % 6 if i % 2 else LABELS[i % 6]} for i in range(10)
    ]
    path = tmp_path / "emo.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    meta, folder = run(tokenizer, tmp_path, {"input": str(path)})
    assert {s: c["examples"] for s, c in meta["splits"].items()} == {
        "test": 1,
        "train": 8,
        "validation": 1,
    }
    for split in meta["splits"]:
        for ids, length, label, index in records(folder, split):
            assert ids[:length] == reference.encode(rows[index]["text"]) + [EOT]
            assert label == index % 6


def test_csv_with_own_fields_and_label_names(tokenizer, reference, tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text('review,stars\n"good, very good",pos\nbad,0\nmeh,neg\n', encoding="utf-8")
    options = {
        "input": str(path),
        "text_field": "review",
        "label_field": "stars",
        "label_names": ["neg", "pos"],
    }
    meta, folder = run(tokenizer, tmp_path, options, spec=with_label_names(["neg", "pos"]))
    assert meta["label_names"] == ["neg", "pos"]
    assert meta["class_counts"] == {"train": {"neg": 2, "pos": 1}}  # 3 rows round to all-train
    got = {index: (ids[:length], label) for ids, length, label, index in records(folder, "train")}
    assert got[0] == (reference.encode("good, very good") + [EOT], 1)
    assert got[1][1] == 0 and got[2][1] == 0


def test_hub_offline_error_says_to_pass_input(tokenizer, tmp_path, monkeypatch):
    from huggingface_hub import try_to_load_from_cache

    if isinstance(
        try_to_load_from_cache(
            "dair-ai/emotion", "split/train-00000-of-00001.parquet", repo_type="dataset"
        ),
        str,
    ):
        pytest.skip("dair-ai/emotion is in the local Hugging Face cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.OfflineError, match=r"dair-ai/emotion.*For this task: --input="):
        run(tokenizer, tmp_path, {"input": None})


def test_hub_parquet_files_keep_their_splits(tokenizer, reference, tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def dataset_file(repo_id, filename, what):  # the hub's layout, written locally
        assert repo_id == "dair-ai/emotion" and filename.startswith("split/")
        path = tmp_path / filename.replace("/", "_")
        split = filename.split("/")[1].split("-")[0]
        pq.write_table(pa.table({"text": [f"a {split} text"], "label": [2]}), path)
        return str(path)

    monkeypatch.setattr(hub, "dataset_file", dataset_file)
    meta, folder = run(tokenizer, tmp_path, {"input": None})
    assert meta["source"]["hub_id"] == "dair-ai/emotion" and len(meta["source"]["files"]) == 3
    for split in ("train", "validation", "test"):
        ((ids, length, label, _),) = records(folder, split)
        assert ids[:length] == reference.encode(f"a {split} text") + [EOT] and label == 2


BAD_LINES = [
    (
        "i feel x;happy",
        r"train\.txt: line 3: field 'label_name': unknown label 'happy'; "
        r"known: 0=sadness, 1=joy, 2=love, 3=anger, 4=fear, 5=surprise",
        "bad_label",
    ),
    (" ;joy", r"train\.txt: line 3: field 'text': required field is empty", "empty_field"),
    ("no separator here", r"train\.txt: line 3: no ';' before the label", "malformed_line"),
    (b"\xff\xfe bad;joy\n", r"train\.txt: line 3: not UTF-8", "not_utf8"),
]


@pytest.mark.parametrize("bad_line, pattern, reason", BAD_LINES)
def test_bad_line_stops_naming_file_line_and_field(tokenizer, tmp_path, bad_line, pattern, reason):
    src = write_folder(tmp_path / "emo", [TRAIN[0], bad_line, TRAIN[2]])
    with pytest.raises(RowError, match=pattern):
        run(tokenizer, tmp_path, {"input": src})


def test_bad_lines_skipped_are_counted_by_reason(tokenizer, tmp_path):
    src = write_folder(tmp_path / "emo", [TRAIN[0], *[b for b, _, _ in BAD_LINES], TRAIN[2]])
    meta, _ = run(tokenizer, tmp_path, {"input": src}, on_error="skip")
    rows = meta["rows"]
    assert rows["dropped"] == {"bad_label": 1, "empty_field": 1, "malformed_line": 1, "not_utf8": 1}
    assert rows["read"] == 8 == rows["written"] + sum(rows["dropped"].values())


def test_jsonl_unknown_label_id(tokenizer, tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 6}\n', encoding="utf-8")
    with pytest.raises(RowError, match=r"e\.jsonl: line 2: field 'label': unknown label 6"):
        run(tokenizer, tmp_path, {"input": str(path)})


# ---- the real emotion files ----------------------------------------------------------------


@pytest.fixture(scope="module")
def emotion(tokenizer, tmp_path_factory):
    options = {"input": shared("emotion")}
    opts = PrepOptions(
        output_dir=str(tmp_path_factory.mktemp("emotion")), seq_len=128, task=options
    )
    return prepare(TASK, tokenizer, opts), opts.output_dir, options


def raw_emotion(split_file):
    with open(shared("emotion", split_file), encoding="utf-8") as f:
        return [line.rstrip("\n").rsplit(";", 1) for line in f][1:]


@pytest.mark.slow
def test_real_emotion_counts(emotion):
    meta, _, _ = emotion
    rows = meta["rows"]
    assert rows == {"read": 20000, "written": 20000, "dropped": {}}
    assert {s: c["examples"] for s, c in meta["splits"].items()} == {
        "test": 2000,
        "train": 16000,
        "validation": 2000,
    }
    assert meta["label_names"] == list(LABELS) and meta["truncated"] == 0
    for split, name in (("train", "train.txt"), ("validation", "val.txt"), ("test", "test.txt")):
        counts = collections.Counter(label for _, label in raw_emotion(name))
        assert meta["class_counts"][split] == {n: counts[n] for n in LABELS}


@pytest.mark.slow
def test_real_emotion_examples_decode_to_their_rows(tokenizer, reference, emotion):
    meta, folder, options = emotion
    source = list(TASK.read(TASK.resolve(dict(options))))  # what find_row walks, read once
    seen = set()
    for split in meta["splits"]:
        for ids, length, label, index in records(folder, split):
            row = source[index]
            assert row.split == split and length <= 128 and ids[length:] == [EOT] * (128 - length)
            assert ids[length - 1] == EOT and label == LABELS.index(row.fields["label_name"])
            assert tokenizer.decode(ids[: length - 1]) == row.fields["text"]
            assert ids[: length - 1] == reference.encode(row.fields["text"])
            seen.add(index)
    assert len(seen) == 20000
    assert find_row(TASK, options, 16000).fields["text"] == raw_emotion("val.txt")[0][0]
