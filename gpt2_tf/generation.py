"""Generation: KV-cached decoding with greedy, temperature, top-k and top-p sampling.

Prompts are left-padded into one batch, so every row writes its next token at the same cache
slot; positions come from the padding mask (see `model.py`), so padding changes nothing. The
prefill and the decoding loop run in one `tf.function`; prompt lengths and cache sizes are
rounded up to buckets, so calls with similar sizes reuse one trace.
"""

from __future__ import annotations

import tensorflow as tf

SAMPLERS = ("greedy", "temperature", "top_k", "top_p")
BUCKET = 32  # prompt length and new-token count round up to a multiple of this


def _bucket(n: int, size: int = BUCKET) -> int:
    return max(size, -(-n // size) * size)


def filter_logits(logits, sampler: str, top_k, top_p):
    """Masks [B, V] float32 logits outside the top-k / nucleus to -inf (greedy: untouched).

    Top-p keeps the smallest set of most likely tokens whose probability reaches `top_p`,
    including the token that crosses it.
    """
    if sampler == "top_k":
        kth = tf.math.top_k(logits, k=top_k).values[:, -1:]  # [B, 1]
        return tf.where(logits < kth, float("-inf"), logits)
    if sampler == "top_p":
        sorted_logits = tf.sort(logits, direction="DESCENDING")  # [B, V]
        cum = tf.cumsum(tf.nn.softmax(sorted_logits), axis=-1)
        # A sorted token is kept when the mass before it is below top_p.
        keep = (cum - tf.nn.softmax(sorted_logits)) < top_p
        cutoff = tf.reduce_min(tf.where(keep, sorted_logits, float("inf")), axis=-1, keepdims=True)
        return tf.where(logits < cutoff, float("-inf"), logits)
    return logits


def next_tokens(logits, sampler, temperature, top_k, top_p, seed):
    """[B] int32 next ids from [B, V] float32 logits; `seed` is a stateless [2] seed."""
    if sampler == "greedy":
        return tf.argmax(logits, -1, output_type=tf.int32)
    logits = filter_logits(logits / temperature, sampler, top_k, top_p)
    return tf.random.stateless_categorical(logits, 1, seed, dtype=tf.int32)[:, 0]


class Generator:
    """Compiled generation for one model; reuse it so traces are reused too."""

    def __init__(self, model, jit_compile: bool = False):
        self.model = model
        self.backbone = model.backbone
        self._fn = {}
        self.jit_compile = jit_compile
        self.traces = 0  # counts tf.function traces (tests check that buckets avoid retracing)

    def _compiled(self, sampler: str):
        if sampler not in self._fn:
            self._fn[sampler] = tf.function(
                lambda *a: self._loop(sampler, *a), jit_compile=self.jit_compile
            )
        return self._fn[sampler]

    def _loop(
        self, sampler, prompt_ids, prompt_mask, max_new, temperature, top_k, top_p, seed, stop_ids
    ):
        """prompt_ids/mask [B, P] left-padded; returns new ids [B, N] and counts [B] (N static)."""
        self.traces += 1
        b, p = tf.shape(prompt_ids)[0], prompt_ids.shape[1]
        n = max_new.shape[0]  # a dummy [N] tensor carries the bucketed length as a static shape
        mask = tf.concat([prompt_mask, tf.ones([b, n], prompt_mask.dtype)], 1)  # [B, P + N]
        cache = self.backbone.init_cache(b, p + n)
        hidden, cache = self.backbone.call_with_cache(prompt_ids, mask, cache, 0)
        logits = self.model.logits(hidden[:, -1:])[:, 0]  # [B, V]
        out = tf.TensorArray(tf.int32, size=n)
        done = tf.zeros([b], tf.bool)
        limit = tf.reduce_sum(max_new)  # the caller's max_new_tokens (N is its bucket)
        for t in tf.range(n):
            tok = next_tokens(logits, sampler, temperature, top_k, top_p, seed + tf.stack([0, t]))
            tok = tf.where(done | (t >= limit), -1, tok)
            out = out.write(t, tok)
            done |= tf.reduce_any(tok[:, None] == stop_ids[None, :], -1) | (t >= limit)
            if tf.reduce_all(done):
                break
            hidden, cache = self.backbone.call_with_cache(
                tf.maximum(tok, 0)[:, None], mask, cache, p + t
            )
            logits = self.model.logits(hidden)[:, 0]
        return tf.transpose(out.stack())  # [B, steps]; -1 after a row stopped

    def __call__(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        sampler: str = "greedy",
        temperature: float = 1.0,
        top_k: int = 50,
        top_p: float = 0.9,
        seed: int = 0,
        stop_token_ids=(),
        pad_id: int = 0,
    ) -> list[list[int]]:
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        p = _bucket(max(map(len, prompts)))
        n = _bucket(max_new_tokens)
        if p + n > self.model.config.n_positions:
            p = max(map(len, prompts))
            n = max_new_tokens
        if p + n > self.model.config.n_positions:
            raise ValueError(
                f"prompt ({p}) + new tokens ({n}) exceed n_positions "
                f"{self.model.config.n_positions}"
            )
        ids = [[pad_id] * (p - len(x)) + list(x) for x in prompts]
        mask = [[0] * (p - len(x)) + [1] * len(x) for x in prompts]
        budget = tf.constant([1] * max_new_tokens + [0] * (n - max_new_tokens), tf.int32)  # [N]
        stops = tf.constant(list(stop_token_ids) or [-2], tf.int32)
        new = self._compiled(sampler)(
            tf.constant(ids, tf.int32),
            tf.constant(mask, tf.int32),
            budget,
            tf.constant(temperature, tf.float32),
            tf.constant(top_k, tf.int32),
            tf.constant(top_p, tf.float32),
            tf.constant([seed, 0], tf.int32),
            stops,
        )
        return [_cut(row, stop_token_ids) for row in new.numpy().tolist()]


def _cut(row: list[int], stop_ids) -> list[int]:
    """New ids up to and including the first stop id; -1 marks the end."""
    out = []
    for t in row:
        if t < 0:
            break
        out.append(t)
        if t in stop_ids:
            break
    return out


def generate(model, prompts, max_new_tokens: int, **kwargs) -> list[list[int]]:
    """Token-id prompts -> new token ids per prompt (see `Generator.__call__` for options)."""
    generator = getattr(model, "_gpt2_tf_generator", None)
    if generator is None:
        generator = Generator(model)
        model._gpt2_tf_generator = generator
    return generator(prompts, max_new_tokens, **kwargs)
