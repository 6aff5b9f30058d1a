"""GPT2Tokenizer (Python path): exact to OpenAI's encoder (tiktoken) on every shared text."""

import json
import shutil

import pytest

from gpt2_tf import GPT2Tokenizer
from tests.conftest import VOCAB_DIR, all_shared_texts

HARD_CASES = [
    "",
    " ",
    "   ",
    "\n\n",
    "a\n\nb",
    "x \n y",
    "  's",
    "It's IT'S it’s",
    "\t\tindent",
    "line\r\nnext",
    "\u3000\u3000全角",
    "a\u00a0\u00a0b",
    "thin\u2009\u2009space",
    "६ placeholder",
    "emoji 😀👍🏽 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "1234567890 3.14159",
    "混合 CJK text 和 English",
    "trailing   ",
]


def test_exact_on_all_shared_data(tokenizer, reference):
    total, mismatches = 0, []
    for source, texts in all_shared_texts().items():
        ours = tokenizer.encode_batch(texts)
        for text, ids in zip(texts, ours):
            total += 1
            if ids != reference.encode(text, disallowed_special=()):
                mismatches.append((source, text[:80]))
            elif tokenizer.decode(ids) != text:
                mismatches.append((source, "round trip: " + text[:80]))
    assert total > 60_000
    assert mismatches == []


@pytest.mark.parametrize("text", HARD_CASES)
def test_hard_cases(tokenizer, reference, text):
    assert tokenizer.encode(text) == reference.encode(text, disallowed_special=())
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_tokens(tokenizer, reference):
    text = "Hello<|endoftext|> world <|endoftext|>"
    plain = tokenizer.encode(text)
    assert 50256 not in plain and plain == reference.encode(text, disallowed_special=())
    special = tokenizer.encode(text, allow_special=True)
    assert special == reference.encode(text, allowed_special="all")
    assert special.count(50256) == 2
    assert tokenizer.decode(special) == text
    assert tokenizer.eos_id == 50256 and tokenizer.vocab_size == 50257


def test_encode_batch_matches_encode(tokenizer):
    texts = ["one", "two words", "", "<|endoftext|>x"]
    assert tokenizer.encode_batch(texts) == [tokenizer.encode(t) for t in texts]
    assert tokenizer.encode_batch(texts, allow_special=True)[3] == [50256, 87]


def test_three_folder_layouts_agree(tmp_path, tokenizer):
    text = "The same ids from every layout, café 東京."
    hf = tmp_path / "hf"
    tokenizer.save_pretrained(str(hf))
    assert GPT2Tokenizer.from_pretrained(str(hf)).encode(text) == tokenizer.encode(text)
    transformers = pytest.importorskip("transformers")
    fast = transformers.GPT2TokenizerFast.from_pretrained(str(hf))
    fast.save_pretrained(str(tmp_path / "tj"))
    only_json = tmp_path / "only_json"
    only_json.mkdir()
    shutil.copy(tmp_path / "tj" / "tokenizer.json", only_json / "tokenizer.json")
    from_json = GPT2Tokenizer.from_pretrained(str(only_json))
    assert from_json.encode(text) == tokenizer.encode(text)
    assert from_json.encode("<|endoftext|>", allow_special=True) == [50256]


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        GPT2Tokenizer.from_pretrained(str(tmp_path))
    shutil.copy(f"{VOCAB_DIR}/encoder.json", tmp_path / "encoder.json")
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\nĠ t\nbad line here\n")
    with pytest.raises(ValueError, match=r"vocab.bpe: line 3: a merge must be two symbols"):
        GPT2Tokenizer.from_pretrained(str(tmp_path))
    other = tmp_path / "bert"
    other.mkdir()
    (other / "tokenizer.json").write_text(
        json.dumps({"model": {"type": "WordPiece"}, "pre_tokenizer": {"type": "BertPreTokenizer"}})
    )
    with pytest.raises(ValueError, match="not GPT-2's byte-level BPE"):
        GPT2Tokenizer.from_pretrained(str(other))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        GPT2Tokenizer.from_pretrained(VOCAB_DIR).decode([50257])


def test_the_default_is_openais_vocabulary_shipped_with_the_package(monkeypatch):
    """No argument: OpenAI's two files inside gpt2_tf (the very bytes tiktoken pins), exact to
    the reference on hard cases, whatever lies beside the project."""
    import os

    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    from gpt2_tf.tokenizer.vocab import BUNDLED as BUNDLED_TOKENIZER
    from tests.conftest import reference_encoding

    monkeypatch.delenv("GPT2_TF_TOKENIZER", raising=False)
    tok = GPT2Tokenizer.from_pretrained()
    assert tok.source == BUNDLED_TOKENIZER and "shared" not in os.path.relpath(tok.source)
    # tiktoken's loader refuses files whose sha256 is not OpenAI's.
    data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=os.path.join(BUNDLED_TOKENIZER, "vocab.bpe"),
        encoder_json_file=os.path.join(BUNDLED_TOKENIZER, "encoder.json"),
        vocab_bpe_hash="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        encoder_json_hash="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    )
    reference = reference_encoding()
    for text in HARD_CASES:
        assert tok.encode(text) == reference.encode(text, disallowed_special=()), text
    assert tok.vocab_size == 50257 and tok.eos_id == 50256


def test_the_package_alone_tokenizes_offline(tmp_path):
    """A copy of gpt2_tf in an empty folder (no ../shared beside it, no project), the hub off:
    the default tokenizer loads and round-trips text."""
    import os
    import subprocess
    import sys

    import gpt2_tf

    shutil.copytree(os.path.dirname(gpt2_tf.__file__), tmp_path / "gpt2_tf")
    code = (
        "import gpt2_tf.tokenizer.bpe as t, os; tok = t.GPT2Tokenizer.from_pretrained(); "
        "assert tok.source.startswith(os.getcwd()), tok.source; "
        "print(tok.encode('Hello world'), tok.decode(tok.encode('naïve 中文')))"
    )
    env = {k: v for k, v in os.environ.items() if k != "GPT2_TF_TOKENIZER"}
    env.update(PYTHONPATH=str(tmp_path), HF_HUB_OFFLINE="1")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[15496, 995] naïve 中文"
