"""Answer probability: equal to numpy softmax products of the model's full-sequence logits,
batching changes nothing, candidates ranked both ways, the JSONL mode and `make score-chat`."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from gpt2_tf import GPT2LanguageModel
from gpt2_tf.analyses.scoring import rank, read_jsonl, score, score_many, score_rows
from gpt2_tf.core.reports import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def lm():
    keras.utils.set_random_seed(7)
    return GPT2LanguageModel("tiny")


def numpy_log_probs(model, prompt_ids, answer_ids) -> np.ndarray:
    """Independently: one unpadded forward pass, softmax in float64 numpy, the answer's tokens."""
    ids = np.array([prompt_ids + answer_ids], np.int32)
    logits = np.asarray(model({"token_ids": ids, "padding_mask": np.ones_like(ids)}), np.float64)
    z = logits[0] - logits[0].max(-1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)  # [T, V]
    start = len(prompt_ids)
    return np.log([probs[start + i - 1, t] for i, t in enumerate(answer_ids)])


def test_probability_is_the_product_of_softmax_probabilities(lm, tokenizer):
    prompt, answer = "A: are you coming tonight?\nB:", " yes, see you at eight"
    got = score(lm, tokenizer, prompt, answer)
    # Tokenized apart, as prep does: the answer's leading space starts its first token.
    p_ids, a_ids = tokenizer.encode(prompt), tokenizer.encode(answer)
    assert got.token_ids == a_ids and got.token_texts[0] == " yes"
    want = numpy_log_probs(lm, p_ids, a_ids)
    np.testing.assert_allclose(got.token_probabilities, np.exp(want), rtol=1e-4)
    np.testing.assert_allclose(got.log_probability, want.sum(), rtol=1e-5)
    np.testing.assert_allclose(got.probability, np.prod(np.exp(want)), rtol=1e-4)
    np.testing.assert_allclose(got.mean_log_probability, want.mean(), rtol=1e-5)
    row = got.to_dict()
    assert row["num_tokens"] == len(a_ids)
    assert [t["token"] for t in row["tokens"]] == [tokenizer.decode([i]) for i in a_ids]


def test_batches_with_padding_equal_one_at_a_time(lm, tokenizer):
    pairs = [("A: hi\nB:", " hello"), ("x", " a much longer answer than the others"), ("", "Hi")]
    batched = score_many(lm, tokenizer, pairs, batch_size=2)
    for (p, a), s in zip(pairs, batched):
        p_ids = tokenizer.encode(p) or [tokenizer.eos_id]  # "" continues from <|endoftext|>
        want = numpy_log_probs(lm, p_ids, tokenizer.encode(a))
        np.testing.assert_allclose(s.log_probability, want.sum(), rtol=1e-5)


def test_append_eos_scores_the_end_of_the_reply(lm, tokenizer):
    s = score(lm, tokenizer, "A: hi\nB:", " hello", append_eos=True)
    assert s.token_ids == [*tokenizer.encode(" hello"), tokenizer.eos_id]
    want = numpy_log_probs(lm, tokenizer.encode("A: hi\nB:"), s.token_ids)
    np.testing.assert_allclose(s.log_probability, want.sum(), rtol=1e-5)


def test_ranking_by_probability_and_by_mean_log_probability(lm, tokenizer):
    prompt = "A: what do you want for dinner?\nB:"
    candidates = [" pizza", " I really do not know yet", " soup", " fish and chips please"]
    ranked = rank(lm, tokenizer, prompt, candidates)
    sums, means = {}, {}
    for c in candidates:
        lp = numpy_log_probs(lm, tokenizer.encode(prompt), tokenizer.encode(c))
        sums[c], means[c] = lp.sum(), lp.mean()
    assert [r["answer"] for r in ranked] == sorted(candidates, key=lambda c: -sums[c])
    assert [r["rank"] for r in ranked] == [1, 2, 3, 4]
    by_mean = sorted(candidates, key=lambda c: -means[c])
    assert {r["answer"]: r["normalized_rank"] for r in ranked} == {
        c: i + 1 for i, c in enumerate(by_mean)
    }


def test_jsonl_rows_answers_and_candidates(lm, tokenizer, tmp_path):
    path = tmp_path / "q.jsonl"
    rows = [
        {"prompt": "A: hi\nB:", "answer": " hello"},
        {"prompt": "A: hi\nB:", "candidates": [" hello", " goodbye forever and ever"]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    results = score_rows(lm, tokenizer, read_jsonl(str(path)), batch_size=2)
    single = score(lm, tokenizer, "A: hi\nB:", " hello")
    assert results[0]["probability"] == pytest.approx(single.probability, rel=1e-5)
    cands = results[1]["candidates"]
    assert results[1]["best"] == cands[0]["answer"]
    assert cands[0]["log_probability"] >= cands[1]["log_probability"]
    hello = next(c for c in cands if c["answer"] == " hello")
    assert hello["probability"] == pytest.approx(single.probability, rel=1e-5)


@pytest.mark.parametrize(
    "line, message",
    [
        ("not json", "line 2: not valid JSON"),
        ('{"prompt": "x"}', "line 2: give either 'answer'"),
        ('{"prompt": "x", "answer": "a", "candidates": ["b"]}', "line 2: give either"),
        ('{"prompt": "x", "candidates": []}', "line 2: 'candidates' must be"),
        ('{"answer": "a"}', "line 2: expected an object with a text 'prompt'"),
    ],
)
def test_bad_jsonl_lines_are_named(tmp_path, line, message):
    path = tmp_path / "q.jsonl"
    path.write_text('{"prompt": "p", "answer": "a"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message):
        read_jsonl(str(path))


def test_too_long_is_a_clear_error(lm, tokenizer):
    with pytest.raises(ValueError, match="exceed the model's n_positions 128"):
        score(lm, tokenizer, "word " * 120, " and" * 20)


@pytest.mark.slow
def test_score_chat_pipeline_writes_its_files(lm, tokenizer, tmp_path):
    model_dir = tmp_path / "run" / "final"
    lm.save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    write_json(str(model_dir / "task.json"), {"task": "style_tuning", "kind": "lm", "seq_len": 64})
    questions = tmp_path / "q.jsonl"
    rows = [
        {"prompt": "A: hi", "answer": "hello"},
        {"prompt": "X: hey", "speaker": "Y", "candidates": ["yo", "good evening to you"]},
    ]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cmd = [sys.executable, "-m", "pipelines.style_tuning.score", f"--model_dir={model_dir}"]
    out = subprocess.run(
        [*cmd, f"--input_file={questions}"], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    folder = tmp_path / "run" / "analysis" / "score"
    assert sorted(os.listdir(folder)) == ["report.md", "scores.jsonl", "scores.png"]
    got = [json.loads(x) for x in (folder / "scores.jsonl").read_text().splitlines()]
    # The task's template: the conversation, then "\n{speaker}:", and the reply after a space.
    want = score(lm, tokenizer, "A: hi\nB:", " hello")
    assert got[0]["prompt"] == "A: hi\nB:"
    assert got[0]["log_probability"] == pytest.approx(want.log_probability, rel=1e-5)
    assert got[1]["prompt"] == "X: hey\nY:"
    assert {c["answer"] for c in got[1]["candidates"]} == {" yo", " good evening to you"}
    assert "| rank | answer |" in (folder / "report.md").read_text()
