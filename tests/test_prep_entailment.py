"""entailment_tuning prep: exact ids of premise + visible separator + hypothesis, RTE, bad rows."""

import collections
import csv
import os
from unittest import mock

import pytest

from gpt2_tf.core import hub
from gpt2_tf.data.prep import PrepOptions, find_row, prepare
from gpt2_tf.data.readers import RowError
from gpt2_tf.data.tasks import get_task
from gpt2_tf.data.tasks.entailment import LABELS, render
from tests.conftest import shared
from tests.test_prep_classification import check_batches, records

EOT = 50256
TASK = get_task("entailment_tuning")
HEADER = "sentence1\tsentence2\tlabel\tidx"
TRAIN = [  # (premise, hypothesis, label as written)
    ("The cat sat on the mat.", "A cat is sitting.", "0"),
    ("Zoë won the race in 2001.", "Zoë lost.", "1"),
    ("It rained all day.", "The ground is wet.", "entailment"),
]
DEV = [("Paris is in France.", "Paris is in Spain.", "not_entailment")]


def tsv(rows):
    return [f"{p}\t{h}\t{label}\t{i}" for i, (p, h, label) in enumerate(rows)]


def write_rte(path, train=None, dev=None):
    os.makedirs(path, exist_ok=True)
    for name, lines in (("train.tsv", train or tsv(TRAIN)), ("dev.tsv", dev or tsv(DEV))):
        with open(os.path.join(path, name), "wb") as f:
            f.write(HEADER.encode() + b"\n")
            for line in lines:
                f.write(line if isinstance(line, bytes) else line.encode() + b"\n")
    return str(path)


def run(tokenizer, tmp_path, input_dir, name="out", **kw):
    opts = PrepOptions(
        output_dir=str(tmp_path / name),
        seq_len=kw.pop("seq_len", 32),
        task={"input_dir": input_dir},
        **kw,
    )
    return prepare(TASK, tokenizer, opts), opts.output_dir


def test_exact_ids_labels_and_test_split(tokenizer, reference, tmp_path):
    meta, folder = run(tokenizer, tmp_path, write_rte(tmp_path / "rte"))
    assert meta["rows"] == {"read": 4, "written": 4, "dropped": {}}
    # train.tsv's 3 rows: 90/10 rounds to all-train; dev.tsv is the test split
    assert {s: c["examples"] for s, c in meta["splits"].items()} == {"test": 1, "train": 3}
    assert meta["template"] == "{premise}\nHypothesis: {hypothesis}<|endoftext|>"
    assert meta["label_names"] == ["entailment", "not_entailment"]
    assert any("no labels" in n for n in meta["notes"])
    expected = {i: (p, h, label) for i, (p, h, label) in enumerate(TRAIN + DEV)}
    for split in ("train", "test"):
        stored = records(folder, split)
        for ids, length, label, index in stored:
            premise, hypothesis, want_label = expected[index]
            want = reference.encode(f"{premise}\nHypothesis: {hypothesis}") + [EOT]
            assert ids == want + [EOT] * (32 - len(want)) and length == len(want)
            assert LABELS[label] == {"0": "entailment", "1": "not_entailment"}.get(
                want_label, want_label
            )
        check_batches(folder, split, stored, 32)
    assert records(folder, "test")[0][3] == 3


def test_premise_is_cut_before_the_hypothesis(tokenizer, reference, tmp_path):
    premise = "The committee met on Monday. " * 20
    rows = [(premise, "They met.", "0")]
    meta, folder = run(tokenizer, tmp_path, write_rte(tmp_path / "r", tsv(rows)), seq_len=24)
    assert meta["truncated"] == 1
    ((ids, length, _, _),) = records(folder, "train")
    assert length == 24 and ids[23] == EOT
    text = tokenizer.decode(ids[:23])
    assert text.startswith("The committee met") and text.endswith("\nHypothesis: They met.")
    assert ids[:23] == reference.encode(text)


def test_hypothesis_is_cut_when_the_premise_is_gone(tokenizer, tmp_path):
    rows = [("Short premise.", "word " * 50, "1")]
    src = write_rte(tmp_path / "r", tsv(rows), tsv([("A.", "B.", "0")]))
    meta, folder = run(tokenizer, tmp_path, src, seq_len=12)
    ((ids, length, _, _),) = records(folder, "train")
    assert meta["truncated"] == 1 and length <= 12
    assert tokenizer.decode(ids[: length - 1]).startswith("\nHypothesis: word word")


def test_tfds_offline_error_says_to_pass_input_dir(tokenizer, tmp_path):
    data_dir = str(tmp_path / "tfds")  # an empty tfds folder: glue/rte must be downloaded
    opts = PrepOptions(
        output_dir=str(tmp_path / "o"),
        seq_len=32,
        task={"input_dir": None, "tfds_data_dir": data_dir},
    )
    try:
        prepare(TASK, tokenizer, opts)
    except hub.OfflineError as e:
        assert "--input_dir=" in str(e) and "glue/rte" in str(e)
    else:
        pytest.skip("online: glue/rte was downloaded")


def test_tfds_train_is_held_out_and_validation_is_test(tokenizer, reference, tmp_path):
    import tensorflow_datasets as tfds

    from gpt2_tf.data.tasks import entailment

    # tfds' own mock: random rows in glue/rte's features; no download (the host check is faked).
    with (
        tfds.testing.mock_data(num_examples=4),
        mock.patch.object(entailment.socket, "create_connection"),
    ):
        meta, folder = run(tokenizer, tmp_path, None)
        source = list(TASK.read(TASK.resolve({"input_dir": None})))
    assert meta["source"]["tfds"] == "glue/rte"
    assert {s: c["examples"] for s, c in meta["splits"].items()} == {"test": 4, "train": 4}
    for split in ("train", "test"):
        for ids, length, label, index in records(folder, split):
            row = source[index]
            assert row.file == f"tfds:glue/rte/{'validation' if split == 'test' else 'train'}"
            text = render(row.fields["sentence1"], row.fields["sentence2"])
            assert ids[:length] == reference.encode(text) + [EOT]
            assert label == row.fields["label"]


BAD_LINES = [
    (
        "A.\tB.\tmaybe\t1",
        r"train\.tsv: line 3: field 'label': unknown label 'maybe'; "
        r"known: 0=entailment, 1=not_entailment",
        "bad_label",
    ),
    (
        "\tB.\t0\t1",
        r"train\.tsv: line 3: field 'sentence1': required field is empty",
        "empty_field",
    ),
    ("A.\tB.\t0", r"train\.tsv: line 3: 3 columns, the header has 4", "wrong_column_count"),
    (b"A \xff\xfe.\tB.\t0\t1\n", r"train\.tsv: line 3: not UTF-8", "not_utf8"),
]


@pytest.mark.parametrize("bad_line, pattern, reason", BAD_LINES)
def test_bad_row_stops_naming_file_line_and_field(tokenizer, tmp_path, bad_line, pattern, reason):
    src = write_rte(tmp_path / "rte", [tsv(TRAIN)[0], bad_line, tsv(TRAIN)[2]])
    with pytest.raises(RowError, match=pattern):
        run(tokenizer, tmp_path, src)


def test_bad_rows_skipped_are_counted_by_reason(tokenizer, tmp_path):
    lines = [tsv(TRAIN)[0], *[b for b, _, _ in BAD_LINES], tsv(TRAIN)[2]]
    meta, _ = run(tokenizer, tmp_path, write_rte(tmp_path / "rte", lines), on_error="skip")
    rows = meta["rows"]
    assert rows["dropped"] == {r: 1 for _, _, r in BAD_LINES}
    assert rows["read"] == 7 == rows["written"] + sum(rows["dropped"].values())


# ---- the real GLUE RTE files ---------------------------------------------------------------


def raw_rte(name):
    with open(shared("glue_rte", name), encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.fixture(scope="module")
def rte(tokenizer, tmp_path_factory):
    options = {"input_dir": shared("glue_rte")}
    opts = PrepOptions(output_dir=str(tmp_path_factory.mktemp("rte")), seq_len=256, task=options)
    return prepare(TASK, tokenizer, opts), opts.output_dir, options


@pytest.mark.slow
def test_real_rte_counts(rte):
    meta, _, _ = rte
    rows = meta["rows"]
    assert rows == {"read": 2767, "written": 2767, "dropped": {}}
    splits = {s: c["examples"] for s, c in meta["splits"].items()}
    assert splits == {"test": 277, "train": 2241, "validation": 249}
    assert meta["truncated"] == 3
    train = collections.Counter(LABELS[int(r["label"])] for r in raw_rte("train.tsv"))
    dev = collections.Counter(LABELS[int(r["label"])] for r in raw_rte("dev.tsv"))
    counts = meta["class_counts"]
    assert {n: counts["train"][n] + counts["validation"][n] for n in LABELS} == train
    assert counts["test"] == dict(dev)


@pytest.mark.slow
def test_real_rte_examples_decode_to_their_rows(tokenizer, reference, rte):
    meta, folder, options = rte
    source = list(TASK.read(TASK.resolve(dict(options))))  # what find_row walks, read once
    seen, truncated = set(), 0
    for split in meta["splits"]:
        for ids, length, label, index in records(folder, split):
            row = source[index]
            assert (row.split or split) == split and (row.split == "test") == (split == "test")
            assert length <= 256 and ids[length:] == [EOT] * (256 - length)
            assert ids[length - 1] == EOT and label == int(row.fields["label"])
            text = render(row.fields["sentence1"], row.fields["sentence2"])
            if tokenizer.decode(ids[: length - 1]) != text:  # cut: the premise's beginning
                truncated += 1
                assert text.startswith(tokenizer.decode(ids[:20]))
                continue
            assert ids[: length - 1] == reference.encode(text)
            seen.add(index)
    assert truncated == meta["truncated"] == 3 and len(seen) == 2767 - 3
    assert find_row(TASK, options, 2490).fields == raw_rte("dev.tsv")[0]
