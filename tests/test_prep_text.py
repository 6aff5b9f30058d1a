"""text_tuning prep: documents read from .txt/.jsonl/.json, packed into exact seq_len blocks."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from gpt2_tf.data.prep import PrepOptions, prepare
from gpt2_tf.data.readers import Row, RowError
from gpt2_tf.data.records import load_tfrecords, split_files
from gpt2_tf.data.tasks.text import TASK, read
from tests.conftest import shared

EOT, EOS = "<|endoftext|>", 50256


def _write(path, content) -> str:
    mode = "wb" if isinstance(content, bytes) else "w"
    with open(path, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
        f.write(content)
    return str(path)


def _prep(tokenizer, out, files, seq_len=16, split_blank=False, text_field="text", **kw) -> dict:
    task = {
        "text_files": [str(f) for f in files],
        "text_field": text_field,
        "txt_split_blank_lines": split_blank,
    }
    return prepare(TASK, tokenizer, PrepOptions(str(out), seq_len, task=task, **kw))


def _records(folder, split) -> list[dict]:
    """Every example of a split, in file order: {input_ids, length, source_index, prompt_length}."""
    out = []
    for path in split_files(str(folder), split):
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):  # TFRecord framing: length (8 bytes), its crc (4), data, crc (4)
            n = int.from_bytes(data[pos : pos + 8], "little")
            feature = tf.train.Example.FromString(data[pos + 12 : pos + 12 + n]).features.feature
            out.append({k: list(v.int64_list.value) for k, v in feature.items()})
            pos += 16 + n
    return out


def _stream(records) -> list[int]:
    return [t for r in records for t in r["input_ids"][: r["length"][0]]]


def _texts(options) -> list[str]:
    return [item.fields["text"] for item in read(options)]


# --- readers ------------------------------------------------------------------------------------


def test_txt_whole_file_and_blank_line_blocks(tmp_path):
    path = _write(tmp_path / "songs.txt", "\nSong one\nline two\n\n\n  \nSong two\r\nend\n\n")
    whole = list(read({"text_files": [path]}))
    assert [(r.line, r.fields["text"]) for r in whole] == [
        (2, "Song one\nline two\n\n\n  \nSong two\nend")
    ]
    blocks = list(read({"text_files": [path], "txt_split_blank_lines": True}))
    assert [(r.line, r.fields["text"], r.group) for r in blocks] == [
        (2, "Song one\nline two", 0),
        (7, "Song two\nend", 1),
    ]


def test_folder_sorted_and_jsonl_field(tmp_path):
    _write(tmp_path / "b.jsonl", '{"lyrics": "la la"}\n\n{"lyrics": "do re mi", "x": 1}\n')
    _write(tmp_path / "a.txt", "first")
    _write(tmp_path / "skip.md", "not a corpus file")
    items = list(read({"text_files": [str(tmp_path)], "text_field": "lyrics"}))
    assert [(os.path.basename(r.file), r.line, r.fields["text"]) for r in items] == [
        ("a.txt", 1, "first"),
        ("b.jsonl", 1, "la la"),
        ("b.jsonl", 3, "do re mi"),
    ]


def test_json_documents_nested_with_title_and_line(tmp_path):
    book = {
        "title": "Book",
        "content": [
            {
                "type": "A",
                "content": [
                    {"chapter": "P1", "author": "x", "paragraphs": ["a1", "a2"]},
                    {"chapter": "P2", "paragraphs": ["b1"]},
                ],
            },
            {
                "type": "B",
                "content": [
                    {"title": "T", "chapter": "C", "content": ["c1"]},
                    {"paragraphs": ["no title"]},
                ],
            },
        ],
    }
    path = _write(tmp_path / "book.json", json.dumps(book, indent=1))
    items = list(read({"text_files": [path]}))
    assert [r.fields["text"] for r in items] == ["P1\na1\na2", "P2\nb1", "T\nc1", "no title"]
    lines = open(path, encoding="utf-8").read().split("\n")
    for r in items:  # each document names the line of its object's "{"
        assert lines[r.line - 1].strip() == "{"


def test_chinese_poetry_documents():
    folder = shared("chinese_poetry")
    expected = 0
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            obj = json.load(f)
        nested = isinstance(obj, dict)  # tangshisanbaishou: {"content": [{"content": [poem]}]}
        expected += sum(len(t["content"]) for t in obj["content"]) if nested else len(obj)
    items = list(read({"text_files": [folder]}))
    assert all(isinstance(r, Row) for r in items) and len(items) == expected == 659
    by_file = {}
    for r in items:
        by_file.setdefault(os.path.basename(r.file), r.fields["text"])
    assert by_file["shijing.json"].startswith("关雎\n关关雎鸠，在河之洲。窈窕淑女，君子好逑。\n")
    assert by_file["tangshisanbaishou.json"] == (
        "行宮\n寥落古行宮，宮花寂寞紅。\n白頭宮女在，閒坐說玄宗。"
    )
    assert by_file["lunyu.json"].startswith("学而篇\n子曰：“学而时习之")


# --- packing: exact ids -------------------------------------------------------------------------


def test_tiny_corpus_exact_blocks(tmp_path, tokenizer, reference):
    docs = ["Hello world.", "The cat sat on the mat.\nIt was happy.", "Goodbye, <|endoftext|>!"]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, doc in zip("abc", docs):
        _write(corpus / f"{name}.txt", doc + "\n")
    meta = _prep(tokenizer, tmp_path / "out", [corpus], seq_len=8)
    assert meta["splits"].keys() == {"train"}  # 3 documents: 80/10/10 rounds to 3/0/0
    pieces = [reference.encode_ordinary(d) + [EOS] for d in docs]
    expected = [t for p in pieces for t in p]
    assert len(expected) % 8  # the last block is partial
    starts = np.cumsum([0] + [len(p) for p in pieces])[:-1]
    records = _records(tmp_path / "out", "train")
    assert len(records) == -(-len(expected) // 8) == meta["splits"]["train"]["examples"]
    for k, r in enumerate(records):
        block = expected[8 * k : 8 * k + 8]
        assert r["length"] == [len(block)] and r["prompt_length"] == [0]
        assert r["input_ids"] == block + [EOS] * (8 - len(block))
        assert r["source_index"] == [int(np.searchsorted(starts, 8 * k, side="right")) - 1]
    assert [len(r["input_ids"][: r["length"][0]]) for r in records[:-1]] == [8] * (len(records) - 1)
    x, y, weight = next(iter(load_tfrecords(str(tmp_path / "out"), "train", 64)))
    lengths = [r["length"][0] for r in records]
    positions = np.arange(8)
    np.testing.assert_array_equal(x["padding_mask"], [positions < n for n in lengths])
    np.testing.assert_array_equal(weight, [positions < n - 1 for n in lengths])
    np.testing.assert_array_equal(y[:, :-1], x["token_ids"][:, 1:])


# --- the real corpus ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def poetry(tmp_path_factory, tokenizer, reference):
    """The chinese-poetry corpus prepared once (seq_len 256, seed 0), and its documents."""
    folder = shared("chinese_poetry")
    out = tmp_path_factory.mktemp("poetry")
    meta = _prep(tokenizer, out, [folder], seq_len=256)
    texts = _texts({"text_files": [folder]})
    poetry = {
        "folder": folder,
        "out": out,
        "meta": meta,
        "texts": texts,
        "index": {t: i for i, t in enumerate(texts)},
        "lengths": [len(reference.encode_ordinary(t)) + 1 for t in texts],
    }
    poetry["docs"] = {s: _split_documents(out, s, poetry, reference) for s in meta["splits"]}
    return poetry


def _split_documents(folder, split, poetry, reference) -> list[int]:
    """The documents of a split, recovered by decoding its blocks; checks order and source_index."""
    records = _records(folder, split)
    decoded = reference.decode(_stream(records))
    assert decoded.endswith(EOT)
    docs = [poetry["index"][t] for t in decoded[: -len(EOT)].split(EOT)]  # KeyError: not a document
    assert decoded == "".join(poetry["texts"][i] + EOT for i in docs)
    assert docs == sorted(docs)  # the engine writes a split's documents in reading order
    starts = np.cumsum([0] + [poetry["lengths"][i] for i in docs])[:-1]
    for k, r in enumerate(records):
        assert r["source_index"] == [docs[np.searchsorted(starts, 256 * k, side="right") - 1]]
    return docs


def test_poetry_counts_tokens_and_splits(poetry, reference):
    meta, n = poetry["meta"], len(poetry["texts"])
    assert len(poetry["index"]) == n  # no two documents alike, so decoding names each one
    rows = meta["rows"]
    assert rows["read"] == n == rows["written"] + sum(rows["dropped"].values())
    assert sum(s["tokens"] for s in meta["splits"].values()) == sum(poetry["lengths"])
    docs = poetry["docs"]  # recovered by decoding each split's blocks
    assert {s: len(d) for s, d in docs.items()} == {"train": 527, "validation": 66, "test": 66}
    assert sorted(i for d in docs.values() for i in d) == list(range(n))  # each in one split
    for split, count in meta["splits"].items():
        records = _records(poetry["out"], split)
        assert len(records) == count["examples"]
        assert sum(r["length"][0] for r in records) == count["tokens"]
        assert all(r["length"] == [256] for r in records[:-1])


def test_poetry_subsample_keeps_whole_documents(poetry, tmp_path, tokenizer, reference):
    meta = _prep(tokenizer, tmp_path, [poetry["folder"]], seq_len=256, subsample=0.5)
    n = len(poetry["texts"])
    assert meta["rows"]["written"] == round(0.5 * n) == 330
    assert meta["rows"]["dropped"] == {"subsample": n - 330}
    docs = [i for s in meta["splits"] for i in _split_documents(tmp_path, s, poetry, reference)]
    assert len(docs) == len(set(docs)) == 330
    assert sum(s["tokens"] for s in meta["splits"].values()) == sum(
        poetry["lengths"][i] for i in docs
    )


@pytest.mark.slow
def test_poetry_stages(poetry, tmp_path, tokenizer, reference):
    meta = _prep(tokenizer, tmp_path, [poetry["folder"]], seq_len=256, num_stages=3)
    stages = [f"train-stage{k}" for k in (1, 2, 3)]
    assert meta["splits"].keys() == {*stages, "validation", "test"}
    assert {n for n in os.listdir(tmp_path) if n.startswith("train")} == {
        f"{s}-00000-of-00001.tfrecord" for s in stages
    }
    docs = [_split_documents(tmp_path, s, poetry, reference) for s in stages]
    assert [len(d) for d in docs] == [176, 176, 175]
    assert sorted(i for d in docs for i in d) == poetry["docs"]["train"]  # the same, staged
    for split in ("validation", "test"):  # untouched by staging
        assert _records(tmp_path, split) == _records(poetry["out"], split)

    def count(**kw):
        batches = load_tfrecords(str(tmp_path), "train", 1024, seq_len=256, **kw)
        return sum(int(x["token_ids"].shape[0]) for x, _, _ in batches)

    examples = [meta["splits"][s]["examples"] for s in stages]
    assert count(stage=2) == examples[1]
    assert count() == sum(examples) == len(_records(tmp_path, "train"))


def _bytes(folder) -> dict[str, bytes]:
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}


@pytest.mark.slow
def test_poetry_same_seed_same_bytes_other_seed_other_split(poetry, tmp_path, tokenizer, reference):
    _prep(tokenizer, tmp_path / "again", [poetry["folder"]], seq_len=256)
    assert _bytes(tmp_path / "again") == _bytes(poetry["out"])
    _prep(tokenizer, tmp_path / "seed1", [poetry["folder"]], seq_len=256, seed=1)
    for split in ("train", "validation", "test"):
        other = _split_documents(tmp_path / "seed1", split, poetry, reference)
        assert other != poetry["docs"][split]


# --- bad input ----------------------------------------------------------------------------------


@pytest.fixture
def bad_corpus(tmp_path):
    return {
        "jsonl": _write(tmp_path / "a.jsonl", '{"text": "one"}\n{"text": "two"\n{"text": "3"}\n'),
        "utf8": _write(tmp_path / "b.txt", b"fine line\n\xff\xfe broken\n"),
        "empty": _write(tmp_path / "c.jsonl", '{"text": "four"}\n{"text": "  "}\n'),
        "json": _write(
            tmp_path / "d.json",
            '[\n {"title": "t", "paragraphs": []},\n {"paragraphs": ["five"]}\n]\n',
        ),
    }


@pytest.mark.parametrize(
    "kind, line, field, reason",
    [
        ("jsonl", 2, None, "malformed_json"),
        ("utf8", 2, None, "not_utf8"),
        ("empty", 2, "text", "empty_field"),
        ("json", 2, "paragraphs", "empty_field"),
    ],
)
def test_bad_input_raises_naming_file_line_field(
    bad_corpus, tmp_path, tokenizer, kind, line, field, reason
):
    path = bad_corpus[kind]
    with pytest.raises(RowError) as info:
        _prep(tokenizer, tmp_path / "out", [path])
    e = info.value
    assert (e.file, e.line, e.field, e.reason) == (path, line, field, reason)
    assert str(e).startswith(f"{path}: line {line}" + (f": field {field!r}" if field else ""))


def test_bad_input_skipped_and_counted(bad_corpus, tmp_path, tokenizer, reference):
    meta = _prep(tokenizer, tmp_path / "out", list(bad_corpus.values()), on_error="skip")
    # b.txt is one document, spoiled by its bad line; d.json's first poem is empty
    assert meta["rows"] == {
        "read": 8,
        "written": 4,
        "dropped": {"empty_field": 2, "malformed_json": 1, "not_utf8": 1},
    }
    good = ["one", "3", "four", "five"]
    tokens = sum(len(reference.encode_ordinary(t)) + 1 for t in good)
    assert sum(s["tokens"] for s in meta["splits"].values()) == tokens


def test_empty_txt_file_and_missing_files(tmp_path, tokenizer):
    path = _write(tmp_path / "empty.txt", "\n  \n")
    with pytest.raises(RowError, match=r"empty\.txt: line 1: empty document"):
        _prep(tokenizer, tmp_path / "out", [path])
    with pytest.raises(FileNotFoundError, match="no such file"):
        _prep(tokenizer, tmp_path / "out2", [tmp_path / "nope.txt"])
    with pytest.raises(ValueError, match=r"notes\.md: not a \.txt/\.jsonl/\.json file"):
        _prep(tokenizer, tmp_path / "out3", [_write(tmp_path / "notes.md", "x")])
    with pytest.raises(ValueError, match="--text_files is required"):
        _prep(tokenizer, tmp_path / "out4", [])


def _renamed_mengzi(tmp_path) -> tuple[str, int]:
    """Mencius with its "paragraphs" key renamed: (path, number of chapters)."""
    with open(shared("chinese_poetry", "mengzi.json"), encoding="utf-8") as f:
        chapters = json.load(f)
    renamed = [{("text" if k == "paragraphs" else k): v for k, v in c.items()} for c in chapters]
    return _write(tmp_path / "mengzi.json", json.dumps(renamed, ensure_ascii=False)), len(chapters)


def test_a_json_file_with_no_text_key_is_an_error_or_a_counted_drop(tmp_path, tokenizer):
    """It contributed nothing and said nothing (rows read 20 = written 20 + dropped 0, with the
    file listed in metadata)."""
    path, chapters = _renamed_mengzi(tmp_path)
    good = shared("chinese_poetry", "lunyu.json")
    with pytest.raises(RowError, match=r"mengzi\.json: line 1: .*'paragraphs' or 'content'"):
        _prep(tokenizer, tmp_path / "out", [good, path], seq_len=64)
    meta = _prep(tokenizer, tmp_path / "skip", [good, path], seq_len=64, on_error="skip")
    rows = meta["rows"]
    assert rows["dropped"] == {"no_documents": chapters}  # each chapter counted as lost
    assert rows["read"] == rows["written"] + chapters and rows["written"] == 20  # lunyu's


def test_a_broken_json_file_counts_the_documents_it_held(tmp_path, tokenizer):
    with open(shared("chinese_poetry", "tangshisanbaishou.json"), encoding="utf-8") as f:
        text = f.read()
    cut = _write(tmp_path / "tang.json", text[: len(text) // 2])  # a truncated download
    held = cut_docs = open(cut, encoding="utf-8").read().count('"paragraphs"')
    assert held > 100
    meta = _prep(
        tokenizer,
        tmp_path / "out",
        [cut, shared("chinese_poetry", "lunyu.json")],
        seq_len=64,
        on_error="skip",
    )
    assert meta["rows"]["dropped"] == {"malformed_json": cut_docs}
    assert meta["rows"]["read"] == meta["rows"]["written"] + cut_docs
