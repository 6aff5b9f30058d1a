"""Answer probability: how likely a language model finds a given answer to a prompt.

P(answer | prompt) is the product of the answer's token probabilities, each given the prompt and
the answer tokens before it; the log-probability is reported too, as the product underflows for
long answers. Prompt and answer are tokenized apart, as prep does (`Encoded(prompt, target)`), so
an answer is scored in the tokens the model was trained to produce after the prompt: " yes" (with
its leading space) is one token, not "Ġ" + "yes" merged across the boundary.

Several candidate answers are ranked by probability, which favours short answers; the
length-normalised log-probability (the mean over the answer's tokens) is reported beside it.
Many (prompt, answer) pairs run packed, several to a row of one forward pass (no padding).
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import tensorflow as tf

from gpt2_tf.core.reports import md_cell, md_table, shorten, write_jsonl
from gpt2_tf.core.run_folder import REPORT
from gpt2_tf.evaluation.hidden import hidden_states


@dataclasses.dataclass
class AnswerScore:
    prompt: str
    answer: str
    log_probability: float  # natural log
    token_ids: list[int]
    token_texts: list[str]
    token_probabilities: list[float]

    @property
    def probability(self) -> float:
        return math.exp(self.log_probability)

    @property
    def mean_log_probability(self) -> float:
        """Length-normalised: the log of the geometric mean of the token probabilities."""
        return self.log_probability / max(len(self.token_ids), 1)

    def to_dict(self) -> dict:
        tokens = zip(self.token_texts, self.token_ids, self.token_probabilities)
        return {
            "prompt": self.prompt,
            "answer": self.answer,
            "probability": self.probability,
            "log_probability": self.log_probability,
            "mean_log_probability": self.mean_log_probability,
            "num_tokens": len(self.token_ids),
            "tokens": [{"token": t, "id": i, "probability": p} for t, i, p in tokens],
        }


def answer_log_probs(model, pairs: list[tuple[list[int], list[int]]], batch_size: int = 16):
    """Per-token natural-log probabilities of each answer's ids after its prompt's ids.

    `pairs` are (prompt ids, answer ids); returns one float64 array [len(answer)] per pair. The
    pairs run packed, several to a row (`evaluation.hidden`), `batch_size` rows a forward pass,
    and the [*, vocab] head runs only where an answer token is predicted.
    """
    limit = model.config.n_positions
    for i, (prompt, answer) in enumerate(pairs):
        if not prompt or not answer:
            raise ValueError(f"pair {i}: prompt and answer need at least one token each")
        if len(prompt) + len(answer) > limit:
            raise ValueError(
                f"pair {i}: prompt ({len(prompt)}) + answer ({len(answer)}) tokens exceed the "
                f"model's n_positions {limit}"
            )
    if not pairs:
        return []
    hidden = hidden_states(model, [p + a for p, a in pairs], batch_rows=batch_size)
    # Position len(prompt) - 1 + j predicts the answer's token j.
    rows = np.concatenate([h[len(p) - 1 : len(p) - 1 + len(a)] for h, (p, a) in zip(hidden, pairs)])
    targets = np.concatenate([a for _, a in pairs]).astype(np.int32)
    picked = np.concatenate(
        [
            _token_log_probs(model, rows[s : s + HEAD_ROWS], targets[s : s + HEAD_ROWS])
            for s in range(0, len(rows), HEAD_ROWS)
        ]
    )
    ends = np.cumsum([len(a) for _, a in pairs])
    return [x.astype(np.float64) for x in np.split(picked, ends[:-1])]


HEAD_ROWS = 512  # answer positions per [rows, vocab] head product: 512 x 50257 float32 is 103 MB


def _token_log_probs(model, hidden, targets) -> np.ndarray:
    """log softmax(logits)[target] of hidden [N, E] through the tied head: the target's logit
    minus the log-sum-exp over the vocabulary (no [N, V] log-softmax copy)."""
    logits = model.logits(tf.cast(hidden, model.compute_dtype))  # [N, V] float32
    target = tf.gather(logits, targets, batch_dims=1)
    return (target - tf.reduce_logsumexp(logits, axis=-1)).numpy()


def _prompt_ids(tokenizer, prompt: str | list[int]) -> list[int]:
    ids = list(prompt) if not isinstance(prompt, str) else tokenizer.encode(prompt)
    # An empty prompt continues from <|endoftext|>, as GPT-2 starts a document.
    return ids or [tokenizer.eos_id]


def score_many(
    model, tokenizer, pairs, batch_size: int = 16, append_eos: bool = False
) -> list[AnswerScore]:
    """`pairs` of (prompt, answer) -> their AnswerScores, in order. A prompt is a text or the
    ids a task's template gave; an answer is a text.

    `append_eos` scores answer + <|endoftext|>: the probability that the reply is exactly this
    text and then ends, as the fine-tuning targets do.
    """
    ids = []
    for prompt, answer in pairs:
        answer_ids = tokenizer.encode(answer) + ([tokenizer.eos_id] if append_eos else [])
        ids.append((_prompt_ids(tokenizer, prompt), answer_ids))
    scores = []
    for (prompt, answer), (_, answer_ids), lp in zip(
        pairs, ids, answer_log_probs(model, ids, batch_size)
    ):
        prompt = prompt if isinstance(prompt, str) else tokenizer.decode(prompt)
        texts = [tokenizer.decode([t]) for t in answer_ids]
        scores.append(
            AnswerScore(prompt, answer, float(lp.sum()), answer_ids, texts, np.exp(lp).tolist())
        )
    return scores


def score(model, tokenizer, prompt: str, answer: str, append_eos: bool = False) -> AnswerScore:
    """One answer's probability after `prompt`; see `score_many`."""
    return score_many(model, tokenizer, [(prompt, answer)], append_eos=append_eos)[0]


def ranked(scores: list[AnswerScore]) -> list[dict]:
    """Candidates best first by probability, each with its rank by mean log-probability too."""
    by_mean = sorted(range(len(scores)), key=lambda i: -scores[i].mean_log_probability)
    normalized_rank = {i: r + 1 for r, i in enumerate(by_mean)}
    order = sorted(range(len(scores)), key=lambda i: -scores[i].log_probability)
    return [
        {**scores[i].to_dict(), "rank": r + 1, "normalized_rank": normalized_rank[i]}
        for r, i in enumerate(order)
    ]


def rank(model, tokenizer, prompt: str, candidates: list[str], **kwargs) -> list[dict]:
    """Scores each candidate answer to `prompt`; returns them ranked (see `ranked`)."""
    return ranked(score_many(model, tokenizer, [(prompt, c) for c in candidates], **kwargs))


# ---- JSONL batch mode ----------------------------------------------------------------------------
def _check_row(row, where: str) -> None:
    if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
        raise ValueError(f"{where}: expected an object with a text 'prompt'")
    answer, candidates = row.get("answer"), row.get("candidates")
    if (answer is None) == (candidates is None):
        raise ValueError(f"{where}: give either 'answer' (a text) or 'candidates' (a list)")
    if answer is not None and not isinstance(answer, str):
        raise ValueError(f"{where}: 'answer' must be a text")
    if candidates is not None and (
        not isinstance(candidates, list)
        or not candidates
        or not all(isinstance(c, str) for c in candidates)
    ):
        raise ValueError(f"{where}: 'candidates' must be a non-empty list of texts")


def read_jsonl(path: str) -> list[dict]:
    """Rows `{"prompt", "answer"}` or `{"prompt", "candidates"}`, checked, with their line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}: line {lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
            _check_row(row, where)
            rows.append(row)
    return rows


def _answers(row: dict) -> list[str]:
    return [row["answer"]] if "answer" in row else row["candidates"]


def _as_written(row: dict):
    return row["prompt"], _answers(row)


def score_rows(model, tokenizer, rows: list[dict], render=None, **kwargs) -> list[dict]:
    """One result per row: an answer's score, or the candidates ranked. Every pair of every row
    runs in the same batches. `render(row) -> (prompt text, [answer texts])` applies a task's
    format (default: the row's texts as they are)."""
    render = render or _as_written
    rendered = [render(r) for r in rows]
    pairs = [(p, a) for p, answers in rendered for a in answers]
    scores, results, at = score_many(model, tokenizer, pairs, **kwargs), [], 0
    for row, (_, answers) in zip(rows, rendered):
        mine, at = scores[at : at + len(answers)], at + len(answers)
        if "answer" in row:
            results.append({**mine[0].to_dict(), "input": row})
        else:
            cands = ranked(mine)
            best_norm = min(cands, key=lambda c: c["normalized_rank"])
            results.append(
                {
                    "prompt": mine[0].prompt,
                    "input": row,
                    "best": cands[0]["answer"],
                    "best_normalized": best_norm["answer"],
                    "candidates": cands,
                }
            )
    return results


def task_render(tokenizer, task: dict, answer=lambda a: a, **defaults):
    """A `render` for `score_rows` that reads rows as the trained task does: the prompt text (as
    the `text` field, with the row's other fields, e.g. a speaker; `defaults` fill those missing)
    becomes ids through the task's own `prompt`, as in prep; `answer` formats each answer."""
    from gpt2_tf.data.tasks import EncodeContext, get_task

    spec, ctx = get_task(task["task"]), EncodeContext(tokenizer, task["seq_len"], {})

    def render(row):
        fields = {k: v for k, v in row.items() if k not in ("prompt", "answer", "candidates")}
        ids = spec.prompt({**defaults, **fields, "text": row["prompt"]}, ctx)
        return ids, [answer(a) for a in _answers(row)]

    return render


# ---- report and plot -----------------------------------------------------------------------------
def _label(text: str, width: int, keep: str = "head") -> str:
    """A plot label: one line of at most `width` characters; a prompt keeps its end."""
    return shorten(text.replace("\n", "⏎"), width, keep)


def markdown_report(results: list[dict], title: str) -> str:
    """A table per kind: single answers, then ranked candidates."""
    lines = [f"# {title}", ""]
    singles = [r for r in results if "candidates" not in r]
    if singles:
        header = ["prompt (end)", "answer", "P(answer)", "log P", "mean log P", "tokens"]
        rows = [
            [md_cell(r["prompt"], 60, "tail"), md_cell(r["answer"], 40), *_probabilities(r)]
            + [r["num_tokens"]]
            for r in singles
        ]
        lines += [md_table(header, rows, align="llrrrr"), ""]
    for r in (r for r in results if "candidates" in r):
        lines += [f"**{md_cell(r['prompt'], 120, 'tail')}**", ""]
        header = ["rank", "answer", "P(answer)", "log P", "mean log P", "rank by mean"]
        rows = [
            [c["rank"], md_cell(c["answer"], 40), *_probabilities(c), c["normalized_rank"]]
            for c in r["candidates"]
        ]
        lines += [md_table(header, rows, align="rlrrrr"), ""]
    return "\n".join(lines)


def _probabilities(r: dict) -> list[str]:
    return [
        f"{r['probability']:.3e}",
        f"{r['log_probability']:.3f}",
        f"{r['mean_log_probability']:.3f}",
    ]


def _bars(ax, labels, log_probs, what: str, title: str) -> None:
    """Horizontal bars of natural-log probabilities, each labelled with its probability."""
    y = np.arange(len(labels))
    ax.barh(y, log_probs, color="tab:blue")
    longest = max((-lp for lp in log_probs), default=0.0)
    for i, lp in enumerate(log_probs):  # inside a long bar's far end; before a short one's
        inside = -lp > 0.25 * longest
        style = {"ha": "left", "color": "white"} if inside else {"ha": "right", "color": "black"}
        ax.text(lp, i, f" P={math.exp(lp):.2g} ", va="center", fontsize=7, **style)
    ax.set_yticks(y, [_label(x, 30) for x in labels], fontsize=8)
    ax.invert_yaxis()  # first item on top
    ax.set_xlabel(f"log P({what})", fontsize=8)
    ax.set_title(title, fontsize=9)


def plot_scores(results: list[dict], path: str, max_panels: int = 9) -> None:
    """One panel per input (up to `max_panels`): its candidates' log P, best on top, or its
    answer's tokens' log P (each given the prompt and the tokens before it)."""
    from gpt2_tf.analyses import plots

    shown = results[:max_panels]
    if not shown:
        return
    cols = min(3, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = plots.figure(
        rows, cols, figsize=(max(5.6 * cols, 9.5), 0.9 + 2.8 * rows), squeeze=False
    )
    for ax, r in zip(axes.flat, shown):
        prompt = _label(r["prompt"], 48, "tail")
        if "candidates" in r:
            c = r["candidates"]
            values = [x["log_probability"] for x in c]
            _bars(ax, [x["answer"] for x in c], values, "answer", f"candidates after: {prompt}")
        else:
            toks = [repr(t["token"]) for t in r["tokens"]]
            values = [math.log(max(t["probability"], 1e-300)) for t in r["tokens"]]
            _bars(ax, toks, values, "token | before", f"answer tokens after: {prompt}")
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    fig.suptitle("Answer probabilities: candidates ranked by log P(answer), or one answer's tokens")
    plots.save(fig, path)


def write_report(results: list[dict], output_dir: str, title: str) -> list[str]:
    """scores.jsonl (one result a line), report.md and scores.png; returns their paths."""
    import os

    os.makedirs(output_dir, exist_ok=True)
    paths = [os.path.join(output_dir, n) for n in ("scores.jsonl", REPORT, "scores.png")]
    write_jsonl(paths[0], results)
    with open(paths[1], "w", encoding="utf-8") as f:
        f.write(markdown_report(results, title) + "\n![answer probabilities](scores.png)\n")
    plot_scores(results, paths[2])
    return paths
