"""Shared fixtures: the real data in ../shared/data, GPT-2's vocabulary, the tiktoken reference."""

from __future__ import annotations

import csv
import functools
import json
import os

import pytest

# The shell's oneDNN setting ("" where it had none), kept before gpt2_tf puts its own in the
# environment, which every process started from here inherits, pytest-xdist's workers first
# (they start from the process that loaded this file first). See `shell_env`.
_SHELL_ONEDNN = "GPT2_TF_TESTS_SHELL_ONEDNN"
os.environ.setdefault(_SHELL_ONEDNN, os.environ.get("TF_ENABLE_ONEDNN_OPTS", ""))

import gpt2_tf  # noqa: E402, F401  (first: it sets TensorFlow's oneDNN choice before TF loads)

SHARED = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
VOCAB_DIR = os.path.join(SHARED, "gpt2_tokenizer")


def shell_env() -> dict[str, str]:
    """This process's environment as the shell that started the tests had it: oneDNN set as
    there, not as gpt2_tf set it here, so that a child process makes gpt2_tf's choice itself,
    as a command a user types does."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if env[_SHELL_ONEDNN]:
        env["TF_ENABLE_ONEDNN_OPTS"] = env[_SHELL_ONEDNN]
    return env


def shared(*parts: str) -> str:
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.skip(f"shared data missing: {path}")
    return path


def _poetry_texts(obj) -> list[str]:
    """Every string in a chinese-poetry JSON file (titles, authors, paragraphs)."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, list):
        return [t for x in obj for t in _poetry_texts(x)]
    if isinstance(obj, dict):
        return [t for x in obj.values() for t in _poetry_texts(x)]
    return []


@functools.lru_cache(maxsize=1)
def all_shared_texts() -> dict[str, list[str]]:
    """Every text field of every data set in ../shared/data, by source."""
    out: dict[str, list[str]] = {}
    for split in ("train", "val", "test"):
        with open(shared("emotion", f"{split}.txt"), encoding="utf-8") as f:
            out[f"emotion/{split}"] = [line.rstrip("\n").rsplit(";", 1)[0] for line in f][1:]
    for split in ("train", "dev"):
        with open(shared("glue_rte", f"{split}.tsv"), encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        out[f"rte/{split}"] = [r[k] for r in rows for k in ("sentence1", "sentence2")]
    senses = [
        json.loads(x) for x in open(shared("wiktionary", "flat_senses.jsonl"), encoding="utf-8")
    ]
    out["wiktionary"] = [t for s in senses for t in (s["word"], s["definition"], *s["examples"])]
    with open(shared("chat_dialogs", "dialogs.txt"), encoding="utf-8") as f:
        out["chat"] = [t for line in f for t in line.rstrip("\n").split("\t")]
    for name in sorted(os.listdir(shared("chinese_poetry"))):
        with open(shared("chinese_poetry", name), encoding="utf-8") as f:
            out[f"poetry/{name}"] = _poetry_texts(json.load(f))
    rows = [json.loads(x) for x in open(shared("dolly", "dolly_first743.jsonl"), encoding="utf-8")]
    out["dolly"] = [r[k] for r in rows for k in ("instruction", "context", "response")]
    return out


@functools.lru_cache(maxsize=1)
def reference_encoding():
    """OpenAI's encoder as tiktoken builds it from the same two files (the exactness reference)."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=os.path.join(VOCAB_DIR, "vocab.bpe"),
        encoder_json_file=os.path.join(VOCAB_DIR, "encoder.json"),
    )
    return tiktoken.Encoding(
        name="gpt2-local",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256},
    )


@pytest.fixture(scope="session")
def tokenizer():
    from gpt2_tf import GPT2Tokenizer

    return GPT2Tokenizer.from_pretrained(shared("gpt2_tokenizer"))


@pytest.fixture(scope="session")
def reference():
    return reference_encoding()


def _prepared(tokenizer, folder, task, seq_len, **options):
    from gpt2_tf.data.prep import PrepOptions, prepare
    from gpt2_tf.data.tasks import get_task

    prepare(get_task(task), tokenizer, PrepOptions(str(folder), seq_len=seq_len, task=options))
    return str(folder)


@pytest.fixture(scope="session")
def dolly_dir(tokenizer, tmp_path_factory):
    """The real Dolly sample prepared at seq_len 64 (320 train examples)."""
    return _prepared(
        tokenizer,
        tmp_path_factory.mktemp("dolly64"),
        "instruction_tuning",
        64,
        input_jsonl=shared("dolly", "dolly_first743.jsonl"),
    )


@pytest.fixture(scope="session")
def emotion_dir(tokenizer, tmp_path_factory):
    """The real emotion set prepared at seq_len 64."""
    return _prepared(
        tokenizer,
        tmp_path_factory.mktemp("emotion64"),
        "classification_tuning",
        64,
        input=shared("emotion"),
    )


@pytest.fixture(scope="session")
def rte_dir(tokenizer, tmp_path_factory):
    """GLUE RTE prepared at seq_len 128."""
    return _prepared(
        tokenizer,
        tmp_path_factory.mktemp("rte128"),
        "entailment_tuning",
        128,
        input_dir=shared("glue_rte"),
    )


def train_tiny(data_dir: str, out, **overrides) -> str:
    """A tiny model trained one step (seconds): a real run folder whose final/ has task.json."""
    from gpt2_tf.train.trainer import TrainConfig, Trainer

    cfg = dict(
        data_dir=data_dir,
        output_dir=str(out),
        max_steps=1,
        batch_size=4,
        eval_batches=1,
        num_samples=0,
        log_every=1,
        strategy="one_device",
        precision="float32",  # the same model on any CPU (auto picks bfloat16 on some)
    )
    Trainer(TrainConfig(**{**cfg, **overrides})).run()
    return os.path.join(str(out), "final")


@pytest.fixture(scope="session")
def lm_dir(dolly_dir, tmp_path_factory):
    """runs/<task>/final of a tiny instruction-tuned model (shared by export, app, eval tests)."""
    return train_tiny(dolly_dir, tmp_path_factory.mktemp("lm_run"))


@pytest.fixture(scope="session")
def classifier_dir(emotion_dir, tmp_path_factory):
    """runs/<task>/final of a tiny emotion classifier."""
    return train_tiny(emotion_dir, tmp_path_factory.mktemp("classifier_run"))


def pytest_configure(config):
    """On a GPU (make gpu-check): float32 products in float32, not TF32, and deterministic
    kernels, so the exact comparisons (1e-5, identical resumed weights) mean what they do on a
    CPU. Nothing changes on a CPU."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        tf.config.experimental.enable_tensor_float_32_execution(False)
        tf.config.experimental.enable_op_determinism()
