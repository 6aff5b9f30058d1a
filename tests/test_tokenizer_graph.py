"""GraphTokenizer (in-graph path): the ids of OpenAI's encoder (tiktoken) and of GPT2Tokenizer."""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

from gpt2_tf import GPT2Tokenizer
from gpt2_tf.tokenizer.graph import L_16, N_16
from gpt2_tf.tokenizer.vocab import EOT, bytes_to_unicode
from tests.conftest import all_shared_texts

BATCH = 2000
WHITESPACE = [*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B)]
WHITESPACE += [0x2028, 0x2029, 0x202F, 0x205F, 0x3000]  # Unicode White_Space: the reference's `\s`
HARD_CASES = [
    "",
    " ",
    "   ",
    "\n\n",
    " \t\n ",
    "  leading and trailing  ",
    "many     spaces",
    "a\n\nb",
    "x \n y",
    "  's",
    "\n's \t'll",
    "It's",
    "IT'S it’s",
    "\t\tindent\tx",
    "line\r\nnext\r\n",
    "\u3000\u3000全角",
    "a\u00a0\u00a0b",
    "thin\u2009\u2009space",
    " \u3000x \u00a0 y\u2028\u2029z\x0b\x0c\x85w",
    "६ placeholder ६६ a६b",
    "emoji 😀👍🏽 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "1234567890 3.14159  42",
    "混合 CJK text 和 English，标点！",
    "?!... ---  ***",
    "trailing   ",
    "\ufeffbom, nul\x00 and \x01\x7f controls",
]


@pytest.fixture(scope="module")
def graph(tokenizer):
    return tokenizer.graph


def _encoder(graph, allow_special=False):
    """A traced encode over any batch size, as serving code builds it."""
    return tf.function(
        lambda texts: graph.encode(texts, allow_special=allow_special),
        input_signature=[tf.TensorSpec([None], tf.string)],
    )


def _texts(strings):
    return tf.constant([s.encode("utf-8") for s in strings], tf.string)


@pytest.mark.slow
def test_exact_on_all_shared_data(graph, tokenizer, reference):
    encode = _encoder(graph)
    decode = tf.function(lambda ids: graph.decode(ids))
    total, mismatches = 0, []
    for source, texts in all_shared_texts().items():
        python = tokenizer.encode_batch(texts)
        for start in range(0, len(texts), BATCH):
            batch = texts[start : start + BATCH]
            ids = encode(_texts(batch))
            back = decode(ids).numpy()
            for text, got, py, raw in zip(batch, ids.to_list(), python[start:], back):
                total += 1
                if got != reference.encode(text, disallowed_special=()) or got != py:
                    mismatches.append((source, text[:80]))
                elif raw.decode("utf-8") != text:
                    mismatches.append((source, "round trip: " + text[:80]))
    assert total > 60_000
    assert mismatches == []


@pytest.mark.parametrize("text", HARD_CASES)
def test_hard_cases(graph, tokenizer, reference, text):
    ids = graph.encode([text]).to_list()[0]
    assert ids == reference.encode(text, disallowed_special=()) == tokenizer.encode(text)
    assert graph.decode([ids]).numpy()[0].decode("utf-8") == text


def test_every_whitespace_character(graph, reference):
    texts = [
        text.format(w=chr(w))
        for w in WHITESPACE
        for text in ("x{w}{w}y", "{w}'s", "x {w}y", "x{w} y", "{w}{w}", "1{w}{w}{w}2")
    ]
    ids = _encoder(graph)(_texts(texts)).to_list()
    assert ids == [reference.encode(t) for t in texts]


def test_one_ragged_batch_of_every_case(graph, reference):
    ids = _encoder(graph)(_texts(HARD_CASES))
    assert ids.shape[0] == len(HARD_CASES) and ids.dtype == tf.int32
    assert ids.to_list() == [reference.encode(t, disallowed_special=()) for t in HARD_CASES]
    back = graph.decode(ids).numpy()
    assert [b.decode("utf-8") for b in back] == HARD_CASES


@pytest.mark.parametrize(
    "text", ["a" * 3000, "1" * 5000, "ab" * 3000, "中" * 2000, " " * 5000 + "x", "é" * 4000]
)
def test_long_words(graph, reference, text):
    """A pre-token of thousands of characters merges in a few steps, not thousands."""
    assert graph.encode([text]).to_list()[0] == reference.encode(text)


def test_special_tokens(graph, tokenizer, reference):
    texts = [
        "Hello<|endoftext|> world <|endoftext|>",
        "<|endoftext|><|endoftext|>",
        "<|endoftext|>",
        "no special",
        "",
        "a <|endoftext",
    ]
    plain = _encoder(graph)(_texts(texts)).to_list()
    assert plain == [reference.encode(t, disallowed_special=()) for t in texts]
    special = _encoder(graph, allow_special=True)(_texts(texts)).to_list()
    assert special == [reference.encode(t, allowed_special="all") for t in texts]
    assert special == [tokenizer.encode(t, allow_special=True) for t in texts]
    assert special[1] == [50256, 50256]
    assert [b.decode() for b in graph.decode(tf.ragged.constant(special)).numpy()] == texts


def test_traced_with_an_input_signature(graph):
    encode = _encoder(graph)
    texts = ["one", "two words here", "", "three"]
    traced = encode(_texts(texts))
    assert traced.to_list() == graph.encode(texts).to_list()
    assert encode.experimental_get_tracing_count() == 1
    encode(_texts(["a batch", "of another", "size"]))
    assert encode.experimental_get_tracing_count() == 1
    dense = traced.to_tensor(default_value=0)  # [B, T] padded, padding known by length
    again = graph.decode(dense, lengths=traced.row_lengths()).numpy()
    assert [b.decode() for b in again] == texts


def test_invalid_utf8_reads_as_replacement_characters(graph, tokenizer):
    raw = [b"ok \xff\xfe bytes", b"cut \xe6\x97", b"\xf0\x9f\x98"]
    ids = graph.encode(tf.constant(raw)).to_list()
    assert ids == [tokenizer.encode(r.decode("utf-8", "replace")) for r in raw]


# Byte sequences that are not UTF-8: a cut character, a lone continuation byte, an overlong
# form, an encoded surrogate, a code point past U+10FFFF, bytes never used in UTF-8.
BAD_BYTES = [
    b"\xe0\xb8",
    b" recognize\xe0\xb8agency",
    b"\x87....",
    b"\xc0\x80",
    b"\xed\xa0\x80x",
    b"\xf4\x90\x80\x80",
    b"\xf0\x9f\x98",
    b"\xff\xfe\xfd",
    b"ok \xe6\x97\xa5\xe6\x97 end",
    b"\xe2\x82\xac\x80\x80\xf0",
]


def test_decode_gives_valid_utf8_exactly_as_the_python_path(graph, tokenizer):
    """Generated ids can cut a character or pair bytes that are not UTF-8; the in-graph
    detokenizer (the SavedModel's) then gives exactly GPT2Tokenizer.decode's text, with U+FFFD
    where the bytes are invalid, never invalid UTF-8."""
    import numpy as np

    byte_id = {b: tokenizer.encoder[c] for b, c in bytes_to_unicode().items()}
    rows = [[byte_id[b] for b in raw] for raw in BAD_BYTES]
    rng = np.random.default_rng(0)  # and random mixes of byte tokens and whole tokens
    rows += [rng.integers(0, 256, rng.integers(1, 9)).tolist() for _ in range(300)]
    rows += [rng.integers(0, 50256, rng.integers(1, 9)).tolist() for _ in range(300)]
    out = graph.decode(rows).numpy()
    for ids, text in zip(rows, out):
        assert text.decode("utf-8") == tokenizer.decode(ids), ids  # raises if not UTF-8
    assert [t.decode() for t in out[: len(BAD_BYTES)]] == [
        b.decode("utf-8", "replace") for b in BAD_BYTES
    ]


def test_decode_refuses_unknown_ids(graph):
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside the vocabulary"):
        graph.decode([[15496, 50257]])


# ---- tiny vocabularies: the corners of BPE that GPT-2's own vocabulary never reaches ----------
def _tiny(merges, extra=()):
    """Bytes + the given merges (+ `extra` tokens): a GPT2Tokenizer and its graph path."""
    byte_chars = bytes_to_unicode()
    encoder = {byte_chars[b]: b for b in range(256)}
    for token in [a + b for a, b in merges] + list(extra):
        encoder.setdefault(token, len(encoder))
    encoder[EOT] = len(encoder)
    tokenizer = GPT2Tokenizer(encoder, merges)
    return tokenizer, tokenizer.graph


def test_unreachable_token_is_not_a_shortcut():
    # "abc" is a token, but BPE on "abc" merges "a b" first and then has no merge for "ab c".
    tokenizer, graph = _tiny([("a", "b"), ("b", "c"), ("a", "bc")])
    texts = ["abc", "bc", "xabc abc"]
    assert graph.encode(texts).to_list() == tokenizer.encode_batch(texts)
    assert [tokenizer.id_to_token(i) for i in tokenizer.encode("abc")] == ["ab", "c"]


def test_merge_list_that_does_not_compose():
    # ("ab", "a") ranks before the merge that makes "ab": merging every "a b" at once would give
    # ["ab", "ab"] for "abab"; one merge at a time gives ["aba", "b"].
    tokenizer, graph = _tiny([("ab", "a"), ("a", "b")], extra=["ab"])
    assert not graph._all_at_once
    texts = ["abab", "ababab", "aab ba"]
    assert graph.encode(texts).to_list() == tokenizer.encode_batch(texts)
    assert [tokenizer.id_to_token(i) for i in tokenizer.encode("abab")] == ["aba", "b"]


def _ranges(spec: str) -> list[int]:
    """The code points of a `\\x{A}-\\x{B}\\x{C}` class body."""
    pairs = re.findall(r"\\x\{(\w+)\}(?:-\\x\{(\w+)\})?", spec)
    return [c for first, last in pairs for c in range(int(first, 16), int(last or first, 16) + 1)]


def _chains(texts):
    """A vocabulary where each text is one token, reached byte by byte: (ranks, merges)."""
    byte_chars = bytes_to_unicode()
    chars = lambda raw: "".join(byte_chars[b] for b in raw)  # noqa: E731
    ranks, merges = {bytes([b]): b for b in range(256)}, []
    for raw in (t.encode("utf-8") for t in texts):
        for k in range(2, len(raw) + 1):
            if raw[:k] not in ranks:
                ranks[raw[:k]] = len(ranks)
                merges.append((chars(raw[: k - 1]), chars(raw[k - 1 : k])))
    return ranks, merges


def test_character_classes_match_the_reference():
    """Whitespace, `\\p{L}` and `\\p{N}` as the reference's regex engine has them.

    GPT-2's vocabulary hardly ever merges across a class boundary, so the ids of real text would
    not show a gap in a class. Here a vocabulary of "a" + c, "1" + c and "!" + c chains makes each
    text one token exactly when the pre-tokenizer keeps its two characters together, which tells
    whether c is a letter, a number, or neither and no whitespace.
    """
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str

    step = 0x10FFFF // 3000  # a sample of every plane, and every Unicode 15.1 / 16.0 addition
    points = {*range(0xA0, 0x110000, step), *_ranges(L_16), *_ranges(N_16), *WHITESPACE}
    points |= {0x1C, 0x1D, 0x1E, 0x1F, 0x180E, 0x200B, 0x2060, 0xFEFF}  # whitespace lookalikes
    texts = [p + chr(c) for c in sorted(points) if not 0xD800 <= c < 0xE000 for p in "a1!"]
    ranks, merges = _chains(texts)
    reference = tiktoken.Encoding(
        name="classes", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={}
    )
    tokenizer, graph = _tiny(merges)
    ids = graph.encode(_texts(texts)).to_list()
    wrong = [ascii(t) for t, got in zip(texts, ids) if got != reference.encode_ordinary(t)]
    assert wrong == []
    assert ids == tokenizer.encode_batch(texts)
    assert sum(len(i) == 1 for i in ids) > 5000  # the probe does keep letters together


# ---- SavedModel: a fresh process with TensorFlow only --------------------------------------
class _Serving(tf.Module):
    def __init__(self, graph):
        super().__init__()
        self.tokenizer = graph

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def encode(self, texts):
        ids = self.tokenizer.encode(texts, allow_special=True)  # [B, (T)]
        return {"ids": ids.to_tensor(), "lengths": ids.row_lengths()}

    @tf.function(
        input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int64)]
    )
    def decode(self, ids, lengths):
        return {"texts": self.tokenizer.decode(ids, lengths=lengths)}


LOAD_AND_CHECK = """
    import json, sys
    import tensorflow as tf
    cases = json.load(open(sys.argv[2]))
    served = tf.saved_model.load(sys.argv[1])
    out = served.signatures["encode"](texts=tf.constant(cases["texts"]))
    ids = [row[:n].tolist() for row, n in zip(out["ids"].numpy(), out["lengths"].numpy())]
    assert ids == cases["ids"], (ids, cases["ids"])
    back = served.signatures["decode"](ids=out["ids"], lengths=out["lengths"])["texts"]
    assert [b.decode() for b in back.numpy()] == cases["texts"]
    assert "gpt2_tf" not in sys.modules and "tensorflow_text" not in sys.modules
    print("loaded and exact")
"""


@pytest.mark.slow
def test_saved_model_loads_without_gpt2_tf(graph, tokenizer, tmp_path):
    texts = ["Hello world", "  's x\n\n y", "<|endoftext|>after", "", "中文 😀 ६"]
    cases = {"texts": texts, "ids": [tokenizer.encode(t, allow_special=True) for t in texts]}
    serving = _Serving(graph)
    signatures = {"encode": serving.encode, "decode": serving.decode}
    tf.saved_model.save(serving, str(tmp_path / "model"), signatures=signatures)
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    script = textwrap.dedent(LOAD_AND_CHECK)
    run = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "model"), str(tmp_path / "cases.json")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ""},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "loaded and exact" in run.stdout
