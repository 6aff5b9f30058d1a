"""Padding-free evaluation outside training (issue 19), on real rows: perplexity over packed rows
and classifier predictions in length buckets equal their padded results; answer scoring and
GPT-2 sentence embeddings run packed and give what each text gets alone; `make test-<task>`'s
classifier batches by length."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gpt2_tf import GPT2Classifier, GPT2Config, GPT2LanguageModel
from gpt2_tf.analyses.scoring import answer_log_probs
from gpt2_tf.data.batches import load_split
from gpt2_tf.data.packing import pack_sequences
from gpt2_tf.data.records import read_metadata
from gpt2_tf.evaluation import hidden, loop, metrics
from gpt2_tf.serve.inference import predict
from tests.conftest import _prepared, shared

CONFIG = GPT2Config.from_preset("tiny", n_head=4, dropout=0.0)


@pytest.fixture(scope="module")
def lm():
    keras.utils.set_random_seed(11)
    return GPT2LanguageModel(CONFIG, dtype="float32")


def _positions(dataset) -> int:
    return sum(int(tf.size(x["padding_mask"])) for x, _, _ in dataset)


@pytest.fixture(scope="module")
def dolly256(tokenizer, tmp_path_factory):
    """The real Dolly sample at seq_len 256 (134 tokens an example on average)."""
    folder = tmp_path_factory.mktemp("dolly256")
    jsonl = shared("dolly", "dolly_first743.jsonl")
    return _prepared(tokenizer, folder, "instruction_tuning", 256, input_jsonl=jsonl)


def test_packed_perplexity_equals_padded_on_real_dolly(dolly256):
    keras.utils.set_random_seed(11)
    lm = GPT2LanguageModel(CONFIG.replace(n_positions=256), dtype="float32")
    packed, order = load_split(dolly256, "test", 4)
    padded, _ = load_split(dolly256, "test", 4, packing=False)
    assert order is None
    got, want = loop.perplexity_on(lm, packed), loop.perplexity_on(lm, padded)
    assert got["target_tokens"] == want["target_tokens"] > 0
    assert got["mean_nll"] == pytest.approx(want["mean_nll"], rel=1e-5)
    # The same sums from well under two thirds of the computed positions.
    assert _positions(packed) < 0.6 * _positions(padded)


def test_bucketed_predictions_equal_padded_in_the_splits_order(emotion_dir):
    keras.utils.set_random_seed(12)
    model = GPT2Classifier(CONFIG, num_classes=6, dtype="float32")
    bucketed, order = load_split(emotion_dir, "validation", 32)
    padded, _ = load_split(emotion_dir, "validation", 32, packing=False)
    n = read_metadata(emotion_dir)["splits"]["validation"]["examples"]
    assert sorted(order.tolist()) == list(range(n)) and order.tolist() != list(range(n))
    labels, predicted = loop.classifier_predictions(model, bucketed, order)
    want_labels, want = loop.classifier_predictions(model, padded)
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_array_equal(predicted, want)
    assert len(set(want.tolist())) > 1  # a model that predicts one class would prove nothing
    assert _positions(bucketed) < 0.6 * _positions(padded)


def _alone(model, ids):
    x = {"token_ids": np.array([ids], np.int32), "padding_mask": np.ones((1, len(ids)), np.int32)}
    return np.asarray(model.backbone(x))[0]


def _chat_pairs(tokenizer, n=40):
    with open(shared("chat_dialogs", "dialogs.txt"), encoding="utf-8") as f:
        turns = [line.rstrip("\n").split("\t") for line in f][:n]
    return [(tokenizer.encode(a), tokenizer.encode(" " + b)) for a, b in turns]


def test_packed_rows_hold_several_sequences_and_say_where(tokenizer):
    seqs = [ids for pair in _chat_pairs(tokenizer, 10) for ids in pair]
    x, where = pack_sequences(seqs, 64)
    assert len(x["token_ids"]) < len(seqs) // 3
    for s, (r, start) in zip(seqs, where):
        np.testing.assert_array_equal(x["token_ids"][r, start : start + len(s)], s)
        assert len(set(x["segment_ids"][r, start : start + len(s)])) == 1
    with pytest.raises(ValueError, match="sequence 1 is empty"):
        pack_sequences([[1], []], 8)


def test_packed_hidden_states_are_each_sequences_own(lm, tokenizer):
    seqs = [p + a for p, a in _chat_pairs(tokenizer, 12)]
    got = hidden.hidden_states(lm, seqs, batch_rows=2, row_tokens=64)
    for s, h in zip(seqs, got):
        np.testing.assert_allclose(h, _alone(lm, s), atol=1e-5)


def test_packed_answer_scores_equal_each_pair_alone_on_real_chats(lm, tokenizer):
    pairs = _chat_pairs(tokenizer)
    got = answer_log_probs(lm, pairs, batch_size=3)
    for (p, a), lp in zip(pairs, got):
        logits = np.asarray(lm.logits(tf.constant(_alone(lm, p + a))), np.float64)
        z = logits - logits.max(-1, keepdims=True)
        log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
        want = [log_probs[len(p) - 1 + j, t] for j, t in enumerate(a)]
        np.testing.assert_allclose(lp, want, atol=1e-4)
    # Another pair's tokens, in the same row, change nothing.
    changed = [pairs[0], (pairs[1][0], [t + 1 for t in pairs[1][1]]), *pairs[2:]]
    again = answer_log_probs(lm, changed, batch_size=3)
    np.testing.assert_array_equal(again[0], got[0])
    np.testing.assert_array_equal(again[5], got[5])


def test_gpt2_embeddings_are_packed_and_each_texts_own(lm, tokenizer):
    texts = [line.rsplit(";", 1)[0] for line in open(shared("emotion", "val.txt"))][1:41]
    embed = metrics.GPT2Embedder(lm, tokenizer, batch_size=4)
    got = embed(texts)
    assert got.shape == (40, CONFIG.n_embd)
    for text, row in zip(texts, got):
        np.testing.assert_allclose(row, _alone(lm, tokenizer.encode(text)).mean(0), atol=1e-5)
    assert embed([]).shape == (0, CONFIG.n_embd)


def test_classifier_predictions_in_length_buckets_equal_one_padded_batch(tokenizer):
    keras.utils.set_random_seed(13)
    model = GPT2Classifier(CONFIG, num_classes=6, dtype="float32")
    names = ["sadness", "joy", "love", "anger", "fear", "surprise"]
    task = {"task": "classification_tuning", "kind": "classifier", "seq_len": 64}
    task["label_names"] = names
    texts = [line.rsplit(";", 1)[0] for line in open(shared("emotion", "val.txt"))][1:71]
    got = predict(model, tokenizer, task, [{"text": t} for t in texts])
    ids = [tokenizer.encode(t)[:63] + [tokenizer.eos_id] for t in texts]  # the task's prompt
    width = max(map(len, ids))
    x = {
        "token_ids": np.array([r + [0] * (width - len(r)) for r in ids], np.int32),
        "padding_mask": np.array([[1] * len(r) + [0] * (width - len(r)) for r in ids], np.int32),
    }
    logits = np.asarray(model(x), np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    assert [g["label"] for g in got] == [names[i] for i in probs.argmax(-1)]
    for g, p in zip(got, probs):
        np.testing.assert_allclose(list(g["probabilities"].values()), p, atol=1e-4)
