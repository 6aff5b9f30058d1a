"""Generation: KV-cached decoding with greedy, temperature, top-k and top-p sampling.

One decoding loop (`decode`) serves the library and the SavedModel export. Prompts are
left-padded into one batch so every row writes its next token at the same cache slot; positions
come from the padding mask (see `model.py`), so padding changes nothing. Sampling settings are
tensors (temperature <= 0 means greedy, top_k 0 and top_p 1.0 mean "off"), so every sampler runs
in one compiled function. The library rounds prompt length, new-token count and batch size up to
buckets, so calls of similar sizes reuse one trace.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from gpt2_tf.core import hardware
from gpt2_tf.core.compiled import ModelFunction, for_model
from gpt2_tf.model import speed

SAMPLERS = ("greedy", "temperature", "top_k", "top_p")
BUCKET = 32  # prompt length and new-token count round up to a multiple of this


def _top_k_filter(logits, k):
    """Keeps the k most likely tokens; k above the vocabulary keeps them all (k=0 never comes
    here: it means off)."""
    k = tf.clip_by_value(k, 1, tf.shape(logits)[-1])
    kth = tf.math.top_k(logits, k=k).values[:, -1:]  # [B, 1]
    return tf.where(logits < kth, float("-inf"), logits)


def _top_p_filter(logits, p):
    """Keeps the most likely tokens up to and including the one whose mass crosses `p`, and
    always the most likely one (p=0 keeps it alone, as Hugging Face's min_tokens_to_keep=1)."""
    sorted_logits = tf.sort(logits, direction="DESCENDING")  # [B, V]
    probs = tf.nn.softmax(sorted_logits)
    before = tf.cumsum(probs, axis=-1, exclusive=True)  # mass of the tokens ranked above
    cutoff = tf.reduce_min(tf.where(before < p, sorted_logits, float("inf")), -1, keepdims=True)
    cutoff = tf.minimum(cutoff, sorted_logits[:, :1])
    return tf.where(logits < cutoff, float("-inf"), logits)


def sample(logits, temperature, top_k, top_p, seed):
    """[B] int32 ids from [B, V] float32 logits; `seed` is a stateless [2] int32 seed."""

    def draw():
        x = logits / temperature
        x = tf.cond(top_k > 0, lambda: _top_k_filter(x, top_k), lambda: x)
        x = tf.cond(top_p < 1.0, lambda: _top_p_filter(x, top_p), lambda: x)
        return tf.random.stateless_categorical(x, 1, seed, dtype=tf.int32)[:, 0]

    return tf.cond(temperature > 0, draw, lambda: tf.argmax(logits, -1, output_type=tf.int32))


def decode(
    model,
    prompt_ids,
    prompt_mask,
    max_new_tokens,
    cache_extra,
    temperature,
    top_k,
    top_p,
    seed,
    stop_ids,
    xla_kernels: bool = False,
):
    """The decoding loop, in graph. prompt_ids/mask [B, P] left-padded; rows whose mask is all
    zero are batch filler. Returns (new ids [B, max_new_tokens], padded with the first stop id
    or 0, and lengths [B]: tokens up to and including the stop token). B is at least 1.
    `xla_kernels`: the speed path runs each block's work as small XLA programs called from the
    loop (`speed.decoding`); the SavedModel export leaves it off, so it needs no XLA.

    The sampling settings are checked here, for the library and the SavedModel alike (see
    `check_sampling`): an invalid one stops the call with its name and value."""
    with tf.control_dependencies(_sampling_asserts(temperature, top_k, top_p)):
        prompt_ids = tf.identity(prompt_ids)
    backbone = model.backbone
    b, p = tf.shape(prompt_ids)[0], tf.shape(prompt_ids)[1]
    mask = tf.concat([prompt_mask, tf.ones([b, cache_extra], prompt_mask.dtype)], 1)  # [B, P + X]
    cache = backbone.init_cache(b, p + cache_extra)
    kernels = backbone.decoding_kernels(xla_kernels)  # once, outside the loop
    hidden, cache = backbone.call_with_cache(prompt_ids, mask, cache, 0, kernels)
    logits = model.step_logits(hidden[:, -1], kernels)  # [B, V]
    done = tf.reduce_max(prompt_mask, 1) == 0  # filler rows start done
    lengths = tf.zeros([b], tf.int32)
    out = tf.TensorArray(tf.int32, size=max_new_tokens, element_shape=[None])
    pad = stop_ids[0] if stop_ids.shape[0] else 0

    def step(t, logits, cache, done, lengths, out):
        tok = sample(logits, temperature, top_k, top_p, tf.stack([seed, t]))
        tok = tf.where(done, pad, tok)
        lengths += tf.cast(~done, tf.int32)
        done |= tf.reduce_any(tok[:, None] == stop_ids[None, :], -1)
        hidden, cache = backbone.call_with_cache(tok[:, None], mask, cache, p + t, kernels)
        logits = model.step_logits(hidden[:, 0], kernels)
        return t + 1, logits, cache, done, lengths, out.write(t, tok)

    def running(t, logits, cache, done, lengths, out):
        return (t < max_new_tokens) & ~tf.reduce_all(done)

    *_, lengths, out = tf.while_loop(running, step, (0, logits, cache, done, lengths, out))
    ids = tf.transpose(out.stack())  # [B, steps taken]
    fill = tf.fill([b, max_new_tokens - tf.shape(ids)[1]], pad)
    return tf.concat([ids, fill], 1), lengths


# What the sampling settings may be: the same rule in Python (`check_sampling`, a ValueError)
# and in graph (`_sampling_asserts`, an InvalidArgumentError from the SavedModel).
SAMPLING_RULES = {
    "temperature": "temperature must be a finite number (0 or less: greedy)",
    "top_k": "top_k must be 0 (off) or more (above the vocabulary size: all tokens)",
    "top_p": "top_p must be between 0 and 1 (1: off; 0: the most likely token alone)",
}


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    """Refuses what `_sampling_asserts` refuses in graph, naming the value."""
    bad = {
        "temperature": not math.isfinite(temperature),
        "top_k": top_k < 0,
        "top_p": not 0 <= top_p <= 1,  # also NaN
    }
    values = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    for name, wrong in bad.items():
        if wrong:
            raise ValueError(f"{SAMPLING_RULES[name]}, got {values[name]!r}")


def _sampling_asserts(temperature, top_k, top_p):
    checks = {
        "temperature": tf.math.is_finite(temperature),
        "top_k": top_k >= 0,
        "top_p": (top_p >= 0.0) & (top_p <= 1.0),
    }
    values = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    return [
        tf.debugging.Assert(ok, [SAMPLING_RULES[k] + ", got", values[k]])
        for k, ok in checks.items()
    ]


def prompt_room(model, max_new_tokens: int) -> int:
    """Positions left for a prompt beside `max_new_tokens` new ones (a longer prompt keeps its
    end, next to the continuation); an error when there are none."""
    room = model.config.n_positions - max_new_tokens
    if room < 1:
        raise ValueError(
            f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the model's "
            f"{model.config.n_positions} positions"
        )
    return room


def _bucket(n: int, size: int = BUCKET) -> int:
    return max(size, -(-n // size) * size)


def _batch_bucket(n: int) -> int:
    return 1 << (n - 1).bit_length()  # 1, 2, 4, 8, ...


def sampler_settings(sampler: str, temperature: float, top_k: int, top_p: float):
    """(temperature, top_k, top_p) tensors' values for a named sampler."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    check_sampling(temperature, top_k, top_p)
    if sampler != "greedy" and temperature <= 0:
        raise ValueError(f"sampler {sampler!r} needs temperature > 0, got {temperature}")
    if sampler == "top_k" and top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    return {
        "greedy": (0.0, 0, 1.0),
        "temperature": (temperature, 0, 1.0),
        "top_k": (temperature, top_k, 1.0),
        "top_p": (temperature, 0, top_p),
    }[sampler]


class Generator:
    """Compiled generation for one model; reuse it so traces are reused too."""

    def __init__(self, model, jit_compile: bool | str = "auto"):
        """`jit_compile`: True runs each decoding loop as one XLA program, False as a TensorFlow
        graph loop (whose blocks run as small XLA programs on the speed path: `speed.decoding`);
        "auto" chooses per batch bucket (`hardware.resolve_decode_jit`). Greedy, both give the
        same tokens (`tests/test_generation.py`); sampled, a seed draws other numbers."""
        self._model = weakref.ref(model)  # held weakly: see compiled.for_model
        if jit_compile not in (True, False, "auto"):
            raise ValueError(f"jit_compile must be True, False or 'auto', got {jit_compile!r}")
        self.jit_compile = jit_compile

        def fn(ids, mask, max_new, extra, temperature, top_k, top_p, seed, stop_ids):
            settings = (temperature, top_k, top_p, seed, stop_ids)
            return decode(self.model, ids, mask, max_new, extra, *settings, xla_kernels=True)

        # Traced again when LoRA, a merge, a dtype or the speed switch changes after a first call.
        self._fns = {
            jit: ModelFunction(model, fn, also=(speed.enabled,), jit_compile=jit)
            for jit in (False, True)
        }

    def uses_xla(self, rows: int, greedy: bool = True) -> bool:
        """Whether a call with `rows` prompts decodes under XLA. "auto" keeps sampling in graph:
        XLA's stateless random kernels draw other numbers than TensorFlow's for the same seed,
        and a seed should give the library's tokens in the exported SavedModel (a graph) too."""
        if self.jit_compile != "auto":
            return self.jit_compile
        return greedy and hardware.resolve_decode_jit(_batch_bucket(rows))[0]

    @property
    def model(self):
        return self._model()

    @property
    def traces(self) -> int:
        """Python traces so far (tests check that similar sizes reuse one)."""
        return sum(f.traces for f in self._fns.values())

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
    ) -> list[list[int]]:
        """New ids per prompt, up to and including the first stop id (none for no prompts)."""
        settings = sampler_settings(sampler, temperature, top_k, top_p)
        if len(prompts) == 0:
            return []
        if any(len(x) == 0 for x in prompts):
            raise ValueError("every prompt needs at least one token")
        vocab = self.model.config.vocab_size
        for i, row in enumerate(prompts):
            bad = [t for t in row if not 0 <= t < vocab]
            if bad:
                raise ValueError(f"prompt {i}: token id(s) {bad[:5]} outside 0..{vocab - 1}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        p, n, b = (
            _bucket(max(map(len, prompts))),
            _bucket(max_new_tokens),
            _batch_bucket(len(prompts)),
        )
        limit = self.model.config.n_positions
        if p + n > limit:  # no room to round up: use exact sizes
            p, n = max(map(len, prompts)), max_new_tokens
        if p + n > limit:
            raise ValueError(f"prompt ({p}) + new tokens ({n}) exceed n_positions {limit}")
        rows = list(prompts) + [[]] * (b - len(prompts))
        ids = tf.constant([[0] * (p - len(x)) + list(x) for x in rows], tf.int32)
        mask = tf.constant([[0] * (p - len(x)) + [1] * len(x) for x in rows], tf.int32)
        stops = tf.constant(list(stop_token_ids), tf.int32, shape=[len(stop_token_ids)])
        # The loop bound is a tensor (no retrace); the cache size `n` is the bucket (static).
        greedy = settings[0] <= 0
        new, lengths = self._fns[self.uses_xla(len(prompts), greedy)](
            ids,
            mask,
            tf.constant(max_new_tokens, tf.int32),
            n,
            *map(tf.constant, settings),
            tf.constant(seed, tf.int32),
            stops,
        )
        new, lengths = new.numpy(), lengths.numpy()
        return [new[i, : lengths[i]].tolist() for i in range(len(prompts))]


def _cut_at_stop_string(text: str, stop_strings) -> str:
    cuts = [text.find(s) for s in stop_strings if s and s in text]
    return text[: min(cuts)] if cuts else text


def generate(
    model,
    prompts,
    max_new_tokens: int = 64,
    sampler: str = "greedy",
    temperature: float = 1.0,
    top_k: int = 50,
    top_p: float = 0.9,
    seed: int = 0,
    stop_token_ids=None,
    stop_strings=(),
    tokenizer=None,
):
    """Continues each prompt: strings in -> strings out (the continuation, without the stop
    token), token-id lists in -> new id lists (with the stop id, as Hugging Face returns it).

    Stops per row at `<|endoftext|>` (or `stop_token_ids`) and at the first of `stop_strings`
    (the text is cut there). String prompts need a tokenizer; the default is GPT-2's.
    """
    batch, single, texts = _prompt_batch(prompts)
    if not batch:
        return []
    if texts or stop_strings:
        if tokenizer is None:
            from gpt2_tf.tokenizer.bpe import GPT2Tokenizer

            tokenizer = GPT2Tokenizer.from_pretrained()
    if stop_token_ids is None:
        stop_token_ids = (model.config.eos_token_id,)
    ids = [tokenizer.encode(x) for x in batch] if texts else [list(x) for x in batch]
    generator = for_model(model, "generator", lambda: Generator(model))
    new = generator(ids, max_new_tokens, sampler, temperature, top_k, top_p, seed, stop_token_ids)
    if texts:
        stops = set(stop_token_ids)
        out = [tokenizer.decode([t for t in row if t not in stops]) for row in new]
        out = [_cut_at_stop_string(x, stop_strings) for x in out]
    elif stop_strings:
        out = [_trim_ids(tokenizer, row, stop_strings) for row in new]
    else:
        out = new
    return out[0] if single else out


def _is_id(x) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def _prompt_batch(prompts) -> tuple[list, bool, bool]:
    """(the prompts as a list, whether one prompt was given, whether they are text). A prompt
    is a str or a sequence of token ids; anything else is refused, naming it."""
    what = "generate: a prompt is a str or a list of token ids"
    if isinstance(prompts, bytes | bytearray):  # a Sequence of ints, but not token ids
        raise TypeError(f"{what}, got bytes: decode them to a str first")
    if isinstance(prompts, np.ndarray) and prompts.ndim == 1:
        prompts = prompts.tolist()
    if isinstance(prompts, str) or (
        isinstance(prompts, Sequence) and len(prompts) and _is_id(prompts[0])
    ):
        batch, single = [prompts], True
    elif isinstance(prompts, Sequence | np.ndarray):
        batch, single = list(prompts), False
    else:
        raise TypeError(f"{what}, or a list of those; got {type(prompts).__name__}")
    texts = bool(batch) and isinstance(batch[0], str)
    for i, p in enumerate(batch):
        if texts and not isinstance(p, str) or not texts and isinstance(p, str):
            raise TypeError(f"{what}, all of one kind; prompt {i} is {type(p).__name__}")
        if isinstance(p, str):
            try:
                p.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(
                    f"generate: prompt {i} is not valid Unicode ({e.reason} at position "
                    f"{e.start}: {p[max(e.start - 10, 0) : e.start + 10]!r})"
                ) from None
        elif isinstance(p, bytes | bytearray) or not isinstance(p, Sequence | np.ndarray):
            raise TypeError(f"{what}; prompt {i} is {type(p).__name__} (bytes: decode it first)")
        elif not all(_is_id(t) for t in p):
            raise TypeError(f"{what}; prompt {i} holds {sorted({type(t).__name__ for t in p})}")
    return batch, single, texts


def _trim_ids(tokenizer, ids: list[int], stop_strings) -> list[int]:
    """The shortest prefix of `ids` whose text holds a stop string (all of them if none)."""
    for end in range(1, len(ids) + 1):
        if any(s in tokenizer.decode(ids[:end]) for s in stop_strings):
            return ids[:end]
    return ids
