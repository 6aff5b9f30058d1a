"""Dictionary analysis: exact match and top-k on hand-made lists, PCA against the covariance's
eigenvectors, the test split read back exactly, and `make analyze-dictionary` end to end."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from gpt2_tf import GPT2LanguageModel
from gpt2_tf.analyses import dictionary
from gpt2_tf.analyses.dictionary import (
    analyze,
    evaluate_reverse,
    exact_match,
    pair_similarity,
    parse_example,
    principal_components,
    read_split,
    top_k_accuracy,
)
from gpt2_tf.core.reports import write_json
from gpt2_tf.data.prep import PrepOptions, prepare
from gpt2_tf.data.tasks import get_task
from gpt2_tf.data.tasks.dictionary import WORD_PROMPT, clean

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = [
    ("apple", "A round fruit with <i>red</i> or green skin."),
    ("bread", "A food made of flour, water &amp; yeast."),
    ("chair", "A seat with a back, for one person."),
    ("dog", "A domesticated animal that barks."),
    ("river", "A large natural stream of water."),
    ("snow", "Frozen water falling from the sky."),
    ("table", "Furniture with a flat top and legs."),
    ("lamp", "A device that gives light."),
    ("cloud", "A visible mass of water drops in the sky."),
    ("stone", "A small piece of rock."),
    ("bottle", "A container with a narrow neck."),
    ("garden", "A piece of ground where plants are grown."),
    ("window", "An opening in a wall that lets in light."),
    ("pencil", "A tool for writing or drawing."),
    ("candle", "A stick of wax with a wick, burned for light."),
    ("mirror", "A surface that reflects an image."),
    ("horse", "A large animal that people ride."),
    ("bridge", "A structure that crosses a river or road."),
    ("ocean", "A very large body of salt water."),
    ("forest", "A large area covered with trees."),
]


def letters(texts):
    """A stand-in sentence embedder: letter counts (+1, so no vector is zero)."""
    return np.array([[t.lower().count(c) + 1 for c in "abcdefghijklmnopqrstuvwxyz"] for t in texts])


letters.name = "letter counts"


def test_exact_match_and_top_k_on_hand_made_lists():
    refs = ["jab", "Jack", "quay", "zebra"]
    preds = ["jab", "jack", " quay ", "zero"]
    assert exact_match(preds, refs) == 0.5  # jab, quay (white space ignored); not jack
    assert exact_match(preds, refs, ignore_case=True) == 0.75
    cands = [["jab", "jib"], ["jack", "Jack"], ["key", "quay"], ["zero", "zeal", "zebu"]]
    assert top_k_accuracy(cands, refs, 1) == 0.25
    assert top_k_accuracy(cands, refs, 2) == 0.75
    assert top_k_accuracy(cands, refs, 5) == 0.75  # zebra is nowhere


def test_pair_similarity_is_rowwise_cosine():
    a, b = ["ab", "zz"], ["ba", "az"]
    va, vb = letters(a).astype(float), letters(b).astype(float)
    want = (va * vb).sum(1) / np.linalg.norm(va, axis=1) / np.linalg.norm(vb, axis=1)
    np.testing.assert_allclose(pair_similarity(letters, a, b), want)
    assert pair_similarity(letters, a, b)[0] == pytest.approx(1.0)  # same letters


def test_parse_example_both_directions():
    forward = parse_example("Word: jab\nDefinition:", " A quick blow.\nExample: He jabbed.")
    assert forward == ("forward", "jab", "A quick blow.")
    assert parse_example("Definition: A quick blow.\nWord:", " jab") == (
        "reverse",
        "jab",
        "A quick blow.",
    )
    with pytest.raises(ValueError, match="not a dictionary_tuning prompt"):
        parse_example("### Instruction:\nhi", "x")


def test_principal_components_are_the_covariance_eigenvectors():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 8)) * np.arange(8, 0, -1)  # distinct variances: a unique order
    coords, ratios = principal_components(x, 6)
    centred = x - x.mean(0)
    values, vectors = np.linalg.eigh(np.cov(centred.T))
    values, vectors = values[::-1], vectors[:, ::-1]  # largest first
    want = centred @ vectors[:, :6]
    np.testing.assert_allclose(np.abs(coords), np.abs(want), atol=1e-8)  # up to each sign
    np.testing.assert_allclose(ratios, values[:6] / values.sum(), rtol=1e-8)
    few, few_ratios = principal_components(x[:3], 6)  # 3 points span 2 dimensions
    assert few.shape == (3, 6) and np.allclose(few[:, 2:], 0) and few_ratios.sum() == 1.0


@pytest.fixture(scope="module")
def dictionary_dir(tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dictionary")
    path = folder / "senses.jsonl"
    senses = [{"word": w, "pos": "Noun", "definition": d, "examples": []} for w, d in WORDS]
    path.write_text("".join(json.dumps(s) + "\n" for s in senses))
    options = {"input_jsonl": str(path), "direction": "both"}
    prepare(
        get_task("dictionary_tuning"), tokenizer, PrepOptions(str(folder / "tf"), 64, task=options)
    )
    return str(folder / "tf"), senses


def test_read_split_gives_back_the_raw_senses(dictionary_dir, tokenizer):
    data_dir, senses = dictionary_dir
    examples = read_split(data_dir, "test", tokenizer)
    assert len(examples) == 4  # 2 of the 20 words, once per direction
    for ex in examples:
        sense = senses[ex.source_index // 2]  # "both": each sense is read twice, forward first
        assert ex.direction == ("forward", "reverse")[ex.source_index % 2]
        assert (ex.word, ex.definition) == (sense["word"], clean(sense["definition"]))
        if ex.direction == "forward":
            assert ex.prompt_ids == tokenizer.encode(WORD_PROMPT.format(word=sense["word"]))
    assert len(read_split(data_dir, "train", tokenizer, max_examples=5)) == 5


def test_reverse_metrics_from_known_candidates(monkeypatch, dictionary_dir, tokenizer):
    data_dir, _ = dictionary_dir
    examples = [e for e in read_split(data_dir, "test", tokenizer) if e.direction == "reverse"]
    words = [e.word for e in examples]
    known = [[words[0], "x"], ["y", words[1]]]  # first: greedy right; second: found at 2
    monkeypatch.setattr(dictionary, "word_candidates", lambda *a, **k: known)
    got = evaluate_reverse(None, tokenizer, examples, letters, k=2)
    assert got["exact_match"] == 0.5
    assert got["top_k_accuracy"] == {"1": 0.5, "2": 1.0}
    assert [r["exact"] for r in got["per_example"]] == [True, False]
    assert [r["in_top_2"] for r in got["per_example"]] == [True, True]
    cos = pair_similarity(letters, [words[0], "y"], words)
    assert got["mean_cosine"] == pytest.approx(cos.mean())


def test_analyze_writes_its_files(dictionary_dir, tokenizer, tmp_path):
    data_dir, _ = dictionary_dir
    keras.utils.set_random_seed(0)
    model = GPT2LanguageModel("tiny")
    examples = read_split(data_dir, "test", tokenizer)
    got = analyze(model, tokenizer, examples, letters, str(tmp_path), "test", max_new_tokens=6, k=2)
    assert sorted(os.listdir(tmp_path)) == [
        "examples.csv",
        "metrics.json",
        "report.md",
        "word_pca.png",
    ]
    forward = got["forward"]["per_example"]
    assert got["forward"]["mean_cosine"] == pytest.approx(np.mean([r["cosine"] for r in forward]))
    # The generated definition is one line: the prompt's continuation up to a line break.
    assert all("\n" not in r["generated"] for r in forward)
    reverse = got["reverse"]["per_example"]
    assert all(1 <= len(r["candidates"]) <= 2 for r in reverse)
    assert json.loads((tmp_path / "metrics.json").read_text())["embedder"] == "letter counts"


@pytest.mark.slow
def test_analyze_dictionary_pipeline(dictionary_dir, tokenizer, tmp_path):
    data_dir, _ = dictionary_dir
    keras.utils.set_random_seed(0)
    model_dir = tmp_path / "run" / "final"
    GPT2LanguageModel("tiny").save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    task = {"task": "dictionary_tuning", "kind": "lm", "seq_len": 64}
    write_json(str(model_dir / "task.json"), task)
    args = [f"--model_dir={model_dir}", f"--data_dir={data_dir}", "--embedder=gpt2"]
    args += ["--max_new_tokens=8", "--k=2"]
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.dictionary_tuning.analyze", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    folder = tmp_path / "run" / "analysis" / "dictionary"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["forward"]["examples"] == 2 and metrics["reverse"]["examples"] == 2
    assert set(metrics["reverse"]["top_k_accuracy"]) == {"1", "2"}
    assert metrics["embedder"].startswith("GPT-2 mean-pooled")
    assert (folder / "word_pca.png").stat().st_size > 0
