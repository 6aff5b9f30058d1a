"""Generation and classifier metrics against values worked out by hand on tiny inputs."""

import math

import numpy as np
import pytest
import tensorflow as tf

from gpt2_tf.analyses.evaluate import perplexity_on
from gpt2_tf.evaluation import metrics


# ---- distinct-n and lexical diversity ------------------------------------------------------------
def test_distinct_n_counts_over_all_texts_on_whitespace_words():
    texts = ["the cat sat", "the cat ran"]
    assert metrics.distinct_n(texts, 1) == pytest.approx(4 / 6)  # the cat sat ran / 6 words
    assert metrics.distinct_n(texts, 2) == pytest.approx(3 / 4)  # (the cat) twice
    assert metrics.distinct_n(["a b", "a b"], 2) == pytest.approx(1 / 2)
    assert metrics.distinct_n(["a", "b"], 2) == 0.0  # bigrams never cross two texts
    assert metrics.distinct_n([], 1) == 0.0
    assert metrics.distinct_n(["The the,  the"], 1) == 1.0  # case and punctuation kept


def test_distinct_n_in_characters():
    assert metrics.distinct_n(["关关雎鸠"], 1, unit="chars") == pytest.approx(3 / 4)
    assert metrics.distinct_n(["关关 雎鸠"], 2, unit="chars") == 1.0  # spaces are not units
    with pytest.raises(ValueError, match="unit"):
        metrics.distinct_n(["a"], 1, unit="bytes")
    with pytest.raises(ValueError, match="n must"):
        metrics.distinct_n(["a"], 0)


def test_lexical_diversity():
    assert metrics.lexical_diversity(["a b a", "c a"]) == pytest.approx(3 / 5)
    assert metrics.lexical_diversity(["", "  "]) == 0.0
    assert metrics.lexical_diversity(["窈窕淑女"], unit="chars") == 1.0
    assert metrics.mostly_cjk(["关关雎鸠 ok"]) and not metrics.mostly_cjk(["hello 你"])


# ---- sentences and cosine similarity -------------------------------------------------------------
def test_split_sentences():
    text = "Hello there. How are you?  Fine!\nNo stop here\n\nPi is 3.14, e.g.x ok"
    assert metrics.split_sentences(text) == [
        "Hello there.",
        "How are you?",
        "Fine!",
        "No stop here",
        "Pi is 3.14, e.g.x ok",
    ]
    assert metrics.split_sentences('He said "hi." Then left.') == ['He said "hi."', "Then left."]
    assert metrics.split_sentences("关关雎鸠，在河之洲。窈窕淑女，君子好逑。\n参差") == [
        "关关雎鸠，在河之洲。",
        "窈窕淑女，君子好逑。",
        "参差",
    ]
    assert metrics.split_sentences("子曰：“不亦说乎？”有朋") == ["子曰：“不亦说乎？”", "有朋"]
    assert metrics.split_sentences("  ") == [] and metrics.split_sentences("x") == ["x"]


def test_cosine_similarity():
    assert float(metrics.cosine_similarity([1, 0], [1, 1])) == pytest.approx(1 / math.sqrt(2))
    assert metrics.cosine_similarity([1.0, 2.0], [2.0, 4.0]).shape == ()
    rows = metrics.cosine_similarity([[1, 0], [0, 2], [0, 0]], [[-3, 0], [0, 1], [1, 1]])
    np.testing.assert_allclose(rows, [-1.0, 1.0, 0.0])  # a zero vector: 0
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.cosine_similarity([1, 0], [1, 0, 0])


def test_local_coherence_with_a_fake_embedder():
    vectors = {"A.": [1, 0], "B.": [0, 1], "C.": [0, 1], "D.": [1, 0], "E.": [1, 1], "F.": [5, 5]}
    calls = []

    def embed(sentences):
        calls.append(list(sentences))
        return np.array([vectors[s] for s in sentences], float)

    texts = ["A. B. C.", "D. E.", "F."]  # pairs: (A,B) 0, (B,C) 1, (D,E) 1/sqrt(2); F alone
    expected = (0 + 1 + 1 / math.sqrt(2)) / 3
    assert metrics.local_coherence(texts, embed) == pytest.approx(expected)
    assert calls == [["A.", "B.", "C.", "D.", "E.", "F."]]  # one batch
    assert math.isnan(metrics.local_coherence(["One.", "Two"], embed))


# ---- perplexity and classifiers ------------------------------------------------------------------
class StubLM:
    """Every position gives the probabilities (0.5, 0.25, 0.125, 0.125) over a 4-token vocab."""

    def __call__(self, x):
        logits = tf.math.log(tf.constant([0.5, 0.25, 0.125, 0.125]))
        b, t = tf.shape(x["token_ids"])[0], tf.shape(x["token_ids"])[1]
        return tf.tile(logits[None, None, :], [b, t, 1])  # [B, T, 4]


def _batch(y, w):
    y = tf.constant(y, tf.int32)
    x = {"token_ids": tf.zeros_like(y), "padding_mask": tf.ones_like(y)}
    return x, y, tf.constant(w, tf.float32)


def test_perplexity_is_exp_of_the_token_weighted_mean_nll():
    # Targets: token 1 (p 1/4), token 2 (p 1/8) and, in the next batch, token 0 (p 1/2); the
    # weight-0 positions (prompt, padding) hold unlikely tokens that must not count.
    batches = [_batch([[3, 1, 2, 3]], [[0, 1, 1, 0]]), _batch([[0, 3, 3, 3]], [[1, 0, 0, 0]])]
    out = perplexity_on(StubLM(), batches)
    # mean NLL = (log 4 + log 8 + log 2) / 3 = 2 log 2, so perplexity = 4
    assert out["perplexity"] == pytest.approx(4.0, rel=1e-5)
    assert out["mean_nll"] == pytest.approx(2 * math.log(2), rel=1e-5)
    assert out["target_tokens"] == 3
    one = perplexity_on(StubLM(), batches[:1])["perplexity"]
    assert one == pytest.approx(math.exp((math.log(4) + math.log(8)) / 2), rel=1e-5)


def test_classification_metrics_by_hand():
    labels, predictions = [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 0, 2]
    out = metrics.classification_metrics(labels, predictions, ["a", "b", "c"])
    assert out["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]  # [true, predicted]
    assert out["accuracy"] == pytest.approx(4 / 6)
    by_class = {row["label"]: row for row in out["per_class"]}
    # precision = tp / predicted (columns 2, 3, 1); recall = tp / actual (2 each)
    expected = {"a": (1 / 2, 1 / 2, 1 / 2), "b": (2 / 3, 1.0, 0.8), "c": (1.0, 1 / 2, 2 / 3)}
    for name, (p, r, f1) in expected.items():
        row = by_class[name]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p, r, f1))
        assert row["support"] == 2
    assert out["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


# ---- sentence embedders --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_lm():
    from gpt2_tf import GPT2LanguageModel

    return GPT2LanguageModel("tiny")


def test_gpt2_embedder_mean_pools_real_tokens_only(tiny_lm, tokenizer):
    embed = metrics.get_embedder(tiny_lm, tokenizer, kind="gpt2", label="a tiny model")
    assert "GPT-2 mean-pooled" in embed.name and "a tiny model" in embed.name
    texts = ["Hello world, how are you today?", "A cat"]
    got = embed(texts)  # one padded batch
    assert got.shape == (2, 64)
    for text, row in zip(texts, got):
        ids = np.array([tokenizer.encode(text)], np.int32)
        hidden = tiny_lm.backbone({"token_ids": ids, "padding_mask": np.ones_like(ids)})
        np.testing.assert_allclose(row, np.asarray(hidden)[0].mean(0), atol=1e-5)


def test_get_embedder_checks_its_arguments():
    with pytest.raises(ValueError, match="no sentence-embedding model"):
        metrics.get_embedder(kind="gpt2")
    with pytest.raises(ValueError, match="embedder kind"):
        metrics.get_embedder(kind="bert")


@pytest.mark.slow
def test_minilm_embedder_offline():
    pytest.importorskip(metrics.MINILM_PACKAGE)
    embed = metrics.get_embedder()
    assert isinstance(embed, metrics.SentenceEmbedder) and "MiniLM" in embed.name
    vectors = embed(["A cat sits on the mat.", "A kitten rests on a rug.", "Stocks fell today."])
    assert vectors.shape == (3, 384)
    similar = float(metrics.cosine_similarity(vectors[0], vectors[1]))
    unrelated = float(metrics.cosine_similarity(vectors[0], vectors[2]))
    assert similar > 0.5 > unrelated
