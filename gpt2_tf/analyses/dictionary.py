"""Dictionary analysis: how well a dictionary_tuning model defines words and names them.

The test examples are read back from the prepared TFRecords: each example's prompt is
`input_ids[:prompt_length]` and its target `input_ids[prompt_length:length]`, exactly the ids the
model was tested on (so a definition cut to fit seq_len is the cut one); decoding them gives the
word and the reference definition. This needs no raw file and cannot drift from the data.

forward  "Word: w\\nDefinition:" -> generated definition (greedy, up to its line's end), compared
         with the reference by the cosine similarity of their sentence embeddings
reverse  "Definition: d\\nWord:" -> generated word: exact match (greedy), top-k accuracy, and the
         cosine similarity of generated and reference word embeddings. The k candidates are the
         greedy word and k-1 words sampled (top_k/temperature) with seeds 1..k-1, duplicates
         merged; a word is a hit when the reference is among them. (Ranking the vocabulary's next
         token would only judge a word's first token; most words are several.)

Word embeddings are also drawn on their first six principal components (numpy SVD).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gpt2_tf.core import reports
from gpt2_tf.core.reports import md_cell, md_table
from gpt2_tf.core.run_folder import REPORT
from gpt2_tf.data.tasks.dictionary import DEFINITION_PROMPT, TASK, WORD_PROMPT
from gpt2_tf.evaluation.metrics import cosine_similarity

FORWARD, REVERSE = "forward", "reverse"


@dataclasses.dataclass
class TestExample:
    direction: str  # forward or reverse
    word: str
    definition: str  # the reference (forward: the target's first line; reverse: from the prompt)
    prompt_ids: list[int]
    source_index: int


def _between(text: str, template: str, field: str) -> str | None:
    """The value of `{field}` in `text` rendered from `template`; None if it does not fit."""
    head, tail = template.split("{" + field + "}")
    ok = text.startswith(head) and text.endswith(tail) and len(text) >= len(head) + len(tail)
    return text[len(head) : len(text) - len(tail)] if ok else None


def parse_example(prompt: str, target: str) -> tuple[str, str, str]:
    """(direction, word, definition) of a decoded prompt and target (no <|endoftext|>)."""
    word = _between(prompt, WORD_PROMPT, "word")
    if word is not None:  # the target is " {definition}" and maybe "\nExample: ..."
        return FORWARD, word, target.split("\n")[0].strip()
    definition = _between(prompt, DEFINITION_PROMPT, "definition")
    if definition is None:
        raise ValueError(f"not a dictionary_tuning prompt: {prompt[:80]!r}")
    return REVERSE, target.strip(), definition


def read_split(data_dir: str, split: str, tokenizer, max_examples: int = 0) -> list[TestExample]:
    """A prepared split's examples; `max_examples` > 0 keeps that many, evenly spaced (the split
    is in source order, so the first ones would all start with the same letter)."""
    import tensorflow as tf

    from gpt2_tf.data.records import read_metadata, split_files

    meta = read_metadata(data_dir)
    if meta["task"] != TASK.name:
        raise ValueError(f"{data_dir}: prepared for {meta['task']}, not {TASK.name}")
    if meta["tokenizer"]["sha256"] != tokenizer.fingerprint:
        raise ValueError(f"{data_dir}: prepared with another tokenizer than the model's")
    spec = {k: tf.io.FixedLenFeature([], tf.int64) for k in ("length", "prompt_length")}
    spec["source_index"] = tf.io.FixedLenFeature([], tf.int64)
    spec["input_ids"] = tf.io.FixedLenFeature([meta["seq_len"]], tf.int64)
    examples = []
    for record in tf.data.TFRecordDataset(split_files(data_dir, split)):
        ex = {k: v.numpy() for k, v in tf.io.parse_single_example(record, spec).items()}
        ids, p, n = ex["input_ids"].tolist(), int(ex["prompt_length"]), int(ex["length"])
        target = [t for t in ids[p:n] if t != tokenizer.eos_id]
        direction, word, definition = parse_example(
            tokenizer.decode(ids[:p]), tokenizer.decode(target)
        )
        examples.append(TestExample(direction, word, definition, ids[:p], int(ex["source_index"])))
    if 0 < max_examples < len(examples):
        keep = np.linspace(0, len(examples) - 1, max_examples).round().astype(int)
        examples = [examples[i] for i in keep]
    return examples


# ---- measures on plain lists ---------------------------------------------------------------------
def exact_match(predictions: list[str], references: list[str], ignore_case: bool = False):
    """Fraction of predictions equal to their reference (white space around them ignored)."""
    norm = (lambda s: s.strip().casefold()) if ignore_case else str.strip
    return float(np.mean([norm(p) == norm(r) for p, r in zip(predictions, references)]))


def top_k_accuracy(candidates: list[list[str]], references: list[str], k: int) -> float:
    """Fraction of references found among the first `k` candidates of their list."""
    return float(
        np.mean([r.strip() in [c.strip() for c in cs[:k]] for cs, r in zip(candidates, references)])
    )


def pair_similarity(embed, texts_a: list[str], texts_b: list[str]) -> np.ndarray:
    """[N] cosine similarity of each text's embedding with its partner's (one `embed` call)."""
    vectors = np.asarray(embed(list(texts_a) + list(texts_b)), np.float64)
    return cosine_similarity(vectors[: len(texts_a)], vectors[len(texts_a) :])


def principal_components(x: np.ndarray, n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """(coordinates [N, n], explained-variance ratios [n]) of the rows of `x` (PCA by SVD);
    components beyond the data's rank are zeros."""
    centred = np.asarray(x, np.float64) - np.mean(x, axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)  # centred = u @ diag(s) @ vt
    coords, ratios = np.zeros((len(x), n)), np.zeros(n)
    m = min(n, len(s))
    coords[:, :m] = u[:, :m] * s[:m]
    total = np.sum(s**2)
    ratios[:m] = s[:m] ** 2 / total if total > 0 else 0.0
    return coords, ratios


# ---- generation ----------------------------------------------------------------------------------
def first_line(text: str) -> str:
    return text.split("\n")[0].strip()


def generate_lines(model, tokenizer, prompts, max_new_tokens: int, batch_size: int = 32, **gen):
    """Each prompt's continuation up to its first line break or <|endoftext|>, as text.

    Prompts run shortest first, so a batch's new-token budget is cut (to fit n_positions) only
    for the batch of the longest prompts.
    """
    from gpt2_tf.model.generation import generate

    # A line break ends the answer: stopping there saves the steps of an "Example:" line.
    stops = (tokenizer.eos_id, *{tokenizer.encode(s)[0] for s in ("\n", "\n\n")})
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        room = model.config.n_positions - max(len(prompts[i]) for i in rows)
        budget = max(1, min(max_new_tokens, room))
        new = generate(model, [prompts[i] for i in rows], budget, stop_token_ids=stops, **gen)
        for i, ids in zip(rows, new):
            out[i] = first_line(tokenizer.decode([t for t in ids if t != tokenizer.eos_id]))
    return out


def _dedup(words: list[str]) -> list[str]:
    return list(dict.fromkeys(w.strip() for w in words))


def word_candidates(
    model, tokenizer, prompts, k: int, max_new_tokens: int = 8, batch_size: int = 32, **sampling
):
    """Per prompt: the greedy word, then k-1 words sampled with `sampling` (sampler, temperature,
    top_k) and seeds 1..k-1, duplicates merged."""

    def lines(**gen):
        return generate_lines(model, tokenizer, prompts, max_new_tokens, batch_size, **gen)

    draws = [lines(sampler="greedy")] + [lines(seed=seed, **sampling) for seed in range(1, k)]
    return [_dedup([d[i] for d in draws]) for i in range(len(prompts))]


# ---- the two evaluations -------------------------------------------------------------------------
def evaluate_forward(model, tokenizer, examples, embed, max_new_tokens=48, batch_size=32) -> dict:
    """Generated vs reference definitions: the mean cosine similarity, and each example's."""
    examples = [e for e in examples if e.direction == FORWARD]
    if not examples:
        return {"examples": 0}
    prompts = [e.prompt_ids for e in examples]
    generated = generate_lines(model, tokenizer, prompts, max_new_tokens, batch_size)
    cos = pair_similarity(embed, generated, [e.definition for e in examples])
    rows = [
        {"word": e.word, "reference": e.definition, "generated": g, "cosine": float(c)}
        for e, g, c in zip(examples, generated, cos)
    ]
    return {"examples": len(rows), "mean_cosine": float(cos.mean()), "per_example": rows}


def evaluate_reverse(model, tokenizer, examples, embed, k=5, max_new_tokens=8, **sampling) -> dict:
    """Generated vs reference words: exact match, top-1..k accuracy, word-embedding cosine."""
    examples = [e for e in examples if e.direction == REVERSE]
    if not examples:
        return {"examples": 0}
    prompts, words = [e.prompt_ids for e in examples], [e.word for e in examples]
    candidates = word_candidates(model, tokenizer, prompts, k, max_new_tokens, **sampling)
    greedy = [c[0] for c in candidates]
    cos = pair_similarity(embed, greedy, words)
    rows = [
        {
            "definition": e.definition,
            "word": e.word,
            "generated": c[0],
            "candidates": c,
            "exact": c[0] == e.word,
            f"in_top_{k}": e.word in c,
            "cosine": float(s),
        }
        for e, c, s in zip(examples, candidates, cos)
    ]
    return {
        "examples": len(rows),
        "exact_match": exact_match(greedy, words),
        "exact_match_ignore_case": exact_match(greedy, words, ignore_case=True),
        "top_k_accuracy": {str(j): top_k_accuracy(candidates, words, j) for j in range(1, k + 1)},
        "mean_cosine": float(cos.mean()),
        "per_example": rows,
    }


# ---- the word-embedding plot ---------------------------------------------------------------------
def _label_points(ax, xy, labels, count: int, spacing: float = 0.08) -> None:
    """Names up to `count` points, farthest from the centre first (they spread out), skipping any
    closer than `spacing` (a fraction of the axes) to one already named: names stay legible."""
    span = np.ptp(xy, axis=0)
    unit = (xy - xy.min(0)) / np.where(span > 0, span, 1.0)  # [N, 2] in 0..1
    named = []
    for i in np.argsort(-np.hypot(*(xy - xy.mean(0)).T)):
        if len(named) == count:
            break
        if any(np.hypot(*(unit[i] - unit[j])) < spacing for j in named):
            continue
        named.append(i)
        text = labels[i] if len(labels[i]) <= 18 else labels[i][:17] + "…"
        ax.annotate(text, xy[i], fontsize=7, xytext=(3, 3), textcoords="offset points")


def plot_word_pca(words: list[str], vectors, path: str, title: str, groups=None, labels=12):
    """Words on principal components (1,2), (3,4), (5,6); `groups` (one name per word, e.g.
    reference / generated) colours them."""
    from gpt2_tf.analyses import plots

    coords, ratios = principal_components(np.asarray(vectors), 6)
    groups = np.asarray(groups if groups is not None else ["word"] * len(words))
    fig, axes = plots.figure(1, 3, figsize=(15, 4.8))
    for ax, (a, b) in zip(axes, ((0, 1), (2, 3), (4, 5))):
        for name, marker in zip(dict.fromkeys(groups), "o^sx"):
            keep = groups == name
            ax.scatter(coords[keep, a], coords[keep, b], s=12, marker=marker, alpha=0.7, label=name)
        _label_points(ax, coords[:, [a, b]], words, labels)
        ax.set_xlabel(f"PC{a + 1} ({ratios[a]:.1%} of variance)")
        ax.set_ylabel(f"PC{b + 1} ({ratios[b]:.1%} of variance)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    plots.save(fig, path)


def plot_results(results: dict, embed, path: str, embedder_name: str) -> None:
    """The test words (and, reverse, the generated words) on their first six PCs."""
    words, groups = [], []
    for row in results.get(FORWARD, {}).get("per_example", []):
        words += [row["word"]]
        groups += ["test word (forward)"]
    for row in results.get(REVERSE, {}).get("per_example", []):
        words += [row["word"], row["generated"] or "(empty)"]
        groups += ["reference word (reverse)", "generated word (reverse)"]
    pairs = list(dict.fromkeys(zip(words, groups)))  # a word of several senses: one point
    if len(pairs) < 2:
        return
    words, groups = [w for w, _ in pairs], [g for _, g in pairs]
    title = (
        f"Word embeddings ({embedder_name.split(' (')[0]}) on their first six principal "
        f"components: {len(words)} distinct words"
    )
    plot_word_pca(words, embed(words), path, title, groups)


# ---- report --------------------------------------------------------------------------------------
def markdown_report(results: dict, title: str, shown: int = 10) -> str:
    lines, fw, rv = [f"# {title}", ""], results.get(FORWARD, {}), results.get(REVERSE, {})
    lines += [f"Embeddings: {results['embedder']}.", ""]
    if fw.get("examples"):
        lines += [f"## Forward (word -> definition): {fw['examples']} test words", ""]
        lines += [f"Mean cosine similarity, generated vs reference: **{fw['mean_cosine']:.4f}**"]
        rows = [
            [md_cell(r["word"], 20), md_cell(r["reference"], 50), md_cell(r["generated"], 50)]
            + [f"{r['cosine']:.3f}"]
            for r in fw["per_example"][:shown]
        ]
        lines += ["", md_table(["word", "reference", "generated", "cosine"], rows, "lllr"), ""]
    if rv.get("examples"):
        top = ", ".join(f"top-{k} {v:.3f}" for k, v in rv["top_k_accuracy"].items())
        lines += [f"## Reverse (definition -> word): {rv['examples']} test definitions", ""]
        lines += [
            f"Exact match **{rv['exact_match']:.4f}** (ignoring case "
            f"{rv['exact_match_ignore_case']:.4f}); {top}; mean word cosine "
            f"**{rv['mean_cosine']:.4f}**",
            "",
        ]
        rows = [
            [md_cell(r["definition"], 50), md_cell(r["word"], 20), md_cell(r["generated"], 20)]
            + [md_cell(", ".join(r["candidates"]), 40), f"{r['cosine']:.3f}"]
            for r in rv["per_example"][:shown]
        ]
        header = ["definition", "word", "generated", "candidates", "cosine"]
        lines += [md_table(header, rows, "llllr"), ""]
    return "\n".join(lines + ["![word embeddings](word_pca.png)", ""])


def write_csv(results: dict, path: str) -> None:
    """One line per example of either direction."""
    rows = []
    for r in results.get(FORWARD, {}).get("per_example", []):
        row = {"word": r["word"], "definition": r["reference"], "generated": r["generated"]}
        rows.append({"direction": FORWARD, **row, "cosine": r["cosine"]})
    for r in results.get(REVERSE, {}).get("per_example", []):
        row = {k: r[k] for k in ("word", "definition", "generated", "exact", "cosine")}
        rows.append({"direction": REVERSE, **row, "candidates": " | ".join(r["candidates"])})
    fields = ["direction", "word", "definition", "generated", "candidates", "exact", "cosine"]
    reports.write_csv(path, rows, fields)


def analyze(model, tokenizer, examples, embed, output_dir: str, title: str, **settings) -> dict:
    """Both evaluations of `examples` -> metrics.json, examples.csv, word_pca.png, report.md.

    `settings`: max_new_tokens (definitions), word_tokens, k, batch_size, and the sampling of the
    word candidates (temperature, top_k).
    """
    import os

    s = {"max_new_tokens": 48, "word_tokens": 8, "k": 5, "batch_size": 32, **settings}
    sampling = {"sampler": "top_k", "temperature": s.get("temperature", 1.0)}
    sampling |= {"top_k": s.get("top_k", 40), "batch_size": s["batch_size"]}
    results = {
        "embedder": getattr(embed, "name", "unnamed"),
        "settings": s,
        FORWARD: evaluate_forward(
            model, tokenizer, examples, embed, s["max_new_tokens"], s["batch_size"]
        ),
        REVERSE: evaluate_reverse(
            model, tokenizer, examples, embed, s["k"], s["word_tokens"], **sampling
        ),
    }
    os.makedirs(output_dir, exist_ok=True)
    reports.write_json(os.path.join(output_dir, "metrics.json"), results)
    write_csv(results, os.path.join(output_dir, "examples.csv"))
    plot_results(results, embed, os.path.join(output_dir, "word_pca.png"), results["embedder"])
    with open(os.path.join(output_dir, REPORT), "w", encoding="utf-8") as f:
        f.write(markdown_report(results, title))
    return results
