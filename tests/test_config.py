"""GPT2Config: presets, validation, and the Hugging Face / OpenAI file formats."""

import json

import pytest

from gpt2_tf import GPT2Config
from tests.conftest import shared


def test_presets_have_openai_sizes():
    sizes = {name: GPT2Config.from_preset(name) for name in ("124M", "355M", "774M", "1558M")}
    assert [(c.n_layer, c.n_head, c.n_embd) for c in sizes.values()] == [
        (12, 12, 768),
        (24, 16, 1024),
        (36, 20, 1280),
        (48, 25, 1600),
    ]
    assert all(c.vocab_size == 50257 and c.n_positions == 1024 for c in sizes.values())
    tiny = GPT2Config.from_preset("tiny")
    assert (tiny.n_layer, tiny.n_embd, tiny.head_dim, tiny.inner_dim) == (2, 64, 32, 256)


def test_validation_messages():
    with pytest.raises(ValueError, match=r"n_embd \(10\) must be divisible by n_head \(3\)"):
        GPT2Config(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="n_layer must be a positive integer"):
        GPT2Config(n_layer=0)
    with pytest.raises(ValueError, match="dropout"):
        GPT2Config(dropout=1.5)
    with pytest.raises(ValueError, match="Unknown GPT2Config preset 'huge'"):
        GPT2Config.from_preset("huge")


def test_reads_openai_hparams_of_124m():
    config = GPT2Config.from_file(shared("gpt2_tokenizer", "hparams_124M.json"))
    assert config == GPT2Config.from_preset("124M")


def test_hf_and_openai_round_trip(tmp_path):
    config = GPT2Config.from_preset("tiny", dropout=0.1)
    config.save_hf(str(tmp_path / "hf"))
    assert GPT2Config.from_file(str(tmp_path / "hf")) == config
    config.save_openai(str(tmp_path / "oa"))
    assert GPT2Config.from_file(str(tmp_path / "oa")) == config.replace(dropout=0.0)


def test_hf_config_is_what_transformers_reads(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = GPT2Config.from_preset("tiny")
    config.save_hf(str(tmp_path))
    hf = transformers.GPT2Config.from_pretrained(str(tmp_path))
    assert (hf.n_layer, hf.n_head, hf.n_embd, hf.n_positions) == (2, 2, 64, 128)
    assert GPT2Config.from_hf_dict(hf.to_dict()) == config


def test_bad_json_names_file_and_line(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"n_embd": 64,\n "n_layer": }')
    with pytest.raises(ValueError, match=r"config.json: line 2: not valid JSON"):
        GPT2Config.from_file(str(path))
    path.write_text(json.dumps({"model_type": "llama", "vocab_size": 5}))
    with pytest.raises(ValueError, match="model_type is 'llama'"):
        GPT2Config.from_file(str(path))
