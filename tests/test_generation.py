"""Generation: greedy equals Hugging Face's, samplers keep what they should, seeds reproduce,
rows stop on their own, and similar sizes reuse one trace."""

import numpy as np
import pytest
import tensorflow as tf

from gpt2_tf import GPT2LanguageModel
from gpt2_tf.model.generation import Generator, _top_p_filter, decode, sample

PROMPTS = [[464, 2068, 7586, 21831, 18045], [15496], [40, 588, 257]]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A random transformers GPT2LMHeadModel and the same weights loaded here."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=128)
    hf = transformers.GPT2LMHeadModel(config).eval()
    folder = str(tmp_path_factory.mktemp("hf"))
    hf.save_pretrained(folder)
    return hf, GPT2LanguageModel.from_pretrained(folder)


def test_greedy_equals_transformers_on_a_ragged_batch(pair):
    torch = pytest.importorskip("torch")
    hf, ours = pair
    width = max(map(len, PROMPTS))
    ids = torch.tensor([[50256] * (width - len(p)) + p for p in PROMPTS])  # left padding
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in PROMPTS])
    with torch.no_grad():
        ref = hf.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=24,
            do_sample=False,
            pad_token_id=50256,
            eos_token_id=None,
        )[:, width:].tolist()
    assert ours.generate(PROMPTS, 24, stop_token_ids=()) == ref


def test_greedy_equals_full_forward_argmax(pair):
    _, model = pair
    out = model.generate(PROMPTS[0], 6, stop_token_ids=())
    ids = list(PROMPTS[0])
    for _ in range(6):
        logits = model({"token_ids": np.array([ids]), "padding_mask": np.ones((1, len(ids)))})
        ids.append(int(np.argmax(logits[0, -1])))
    assert out == ids[len(PROMPTS[0]) :]


def test_top_p_keeps_the_token_that_crosses_p():
    logits = tf.math.log([[0.5, 0.3, 0.15, 0.05]])
    kept = lambda p: np.isfinite(_top_p_filter(logits, p).numpy()[0]).tolist()  # noqa: E731
    assert kept(0.5) == [True, False, False, False]  # 0.5 reaches p by itself
    assert kept(0.6) == [True, True, False, False]  # 0.5 < 0.6: the second token crosses
    assert kept(0.81) == [True, True, True, False]
    draws = {int(sample(logits, 1.0, 0, 0.6, tf.constant([s, 0]))[0]) for s in range(200)}
    assert draws == {0, 1}


def test_top_k_never_leaves_the_top_k():
    logits = tf.random.stateless_normal([4, 1000], seed=[1, 2]) * 3
    top = tf.math.top_k(logits, 5).indices.numpy()
    for s in range(100):
        ids = sample(logits, 2.0, 5, 1.0, tf.constant([s, 7])).numpy()
        assert all(ids[r] in top[r] for r in range(4))


def test_seed_reproduces_samples(pair):
    _, model = pair
    kwargs = dict(sampler="top_p", temperature=1.0, top_p=0.95, stop_token_ids=())
    a = model.generate(PROMPTS, 12, seed=3, **kwargs)
    assert a == model.generate(PROMPTS, 12, seed=3, **kwargs)
    assert a != model.generate(PROMPTS, 12, seed=4, **kwargs)


def test_each_row_stops_at_its_stop_token(pair):
    _, model = pair
    free = model.generate(PROMPTS, 10, stop_token_ids=())
    stop = free[0][3]
    assert stop not in free[1]
    out = model.generate(PROMPTS, 10, stop_token_ids=[stop])
    assert out[0] == free[0][: free[0].index(stop) + 1]  # ends with the stop id
    assert out[1] == free[1]  # the other row runs on


def test_strings_in_strings_out_and_stop_strings(pair, tokenizer):
    _, model = pair
    ids = model.generate("The quick brown", 8, stop_token_ids=(), tokenizer=tokenizer)
    full = tokenizer.decode(
        model.generate(tokenizer.encode("The quick brown"), 8, stop_token_ids=())
    )
    assert isinstance(ids, str) and ids == full
    stop = full[len(full) // 2 :][:2]
    cut = model.generate(
        ["The quick brown"], 8, stop_token_ids=(), stop_strings=[stop], tokenizer=tokenizer
    )
    assert cut == [full[: full.find(stop)]]


def test_similar_sizes_reuse_one_trace(pair):
    _, model = pair
    generator = Generator(model)
    generator([[1, 2, 3]] * 3, 5)
    generator([[4] * 20, [5], [6, 7], [8]], 30)  # same buckets: 32-token prompts, 32 new, batch 4
    generator([[9] * 7] * 3, 12, sampler="top_k", temperature=0.7, top_k=4)
    assert generator.traces == 1
    generator([[1] * 40], 5)  # a longer prompt: a new bucket
    assert generator.traces == 2


def test_concurrent_calls_each_get_their_own_cache(pair):
    """The cache is written in place, so each call must make its own buffers: calls from several
    threads at once (as a server makes them) give what they give one at a time."""
    from concurrent.futures import ThreadPoolExecutor

    _, model = pair
    generator = Generator(model)
    prompts = [[[p + i for p in row] for row in PROMPTS] for i in range(4)]
    alone = [generator(x, 30) for x in prompts]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda x: generator(x, 30), prompts * 3))
    assert together == alone * 3
    assert len({str(x) for x in alone}) == 4  # the calls differ, so a shared cache would show


def test_bad_arguments(pair):
    _, model = pair
    with pytest.raises(ValueError, match="sampler must be one of"):
        model.generate([[1]], 2, sampler="beam")
    with pytest.raises(ValueError, match="exceed n_positions 128"):
        model.generate([[1] * 120], 20)
    with pytest.raises(ValueError, match="at least one token"):
        model.generate([[]], 2)


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (b"\xff\xfe bytes", TypeError, "got bytes"),  # was read as token ids 255, 254, ...
        ([b"one", b"two"], TypeError, "prompt 0 is bytes"),
        (None, TypeError, "got NoneType"),
        (["fine", None], TypeError, "prompt 1 is NoneType"),
        ([[1, 2], "text"], TypeError, "all of one kind; prompt 1 is str"),
        ([[1, 2.5]], TypeError, "holds \\['float', 'int'\\]"),
        ("lone \ud800 surrogate", ValueError, "prompt 0 is not valid Unicode"),
        ([[1, 50257]], ValueError, "prompt 0: token id\\(s\\) \\[50257\\] outside 0..50256"),
        ([[-1]], ValueError, "outside 0..50256"),
    ],
)
def test_what_is_not_a_prompt_is_refused_by_name(pair, tokenizer, bad, error, match):
    _, model = pair
    with pytest.raises(error, match=match):
        model.generate(bad, 2, tokenizer=tokenizer)


def test_no_prompts_give_no_outputs_and_numpy_ids_are_ids(pair):
    _, model = pair
    assert model.generate([], 4) == []
    ids = model.generate(np.array(PROMPTS[0]), 4, stop_token_ids=())
    assert ids == model.generate(PROMPTS[0], 4, stop_token_ids=())


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(sampler="temperature", temperature=float("nan")), "temperature must be a finite"),
        (dict(sampler="greedy", temperature=float("inf")), "temperature must be a finite"),
        (dict(sampler="top_p", top_p=1.5), "top_p must be between 0 and 1"),
        (dict(sampler="top_p", top_p=float("nan")), "top_p must be between 0 and 1"),
        (dict(sampler="top_k", top_k=-3), "top_k must be 0 \\(off\\) or more"),
    ],
)
def test_invalid_sampling_settings_are_refused(pair, settings, match):
    _, model = pair
    with pytest.raises(ValueError, match=match):
        model.generate(PROMPTS, 4, **settings)


def test_sampling_settings_at_their_limits_are_clamped(pair):
    """top_k above the vocabulary keeps every token (it crashed TopKV2); top_p=0 keeps the most
    likely token alone, which is greedy (every token was dropped, and an id out of range drawn).
    The in-graph checks are the SavedModel's too (tests/test_export.py)."""
    _, model = pair
    kw = dict(temperature=1.0, seed=5, stop_token_ids=())
    free = model.generate(PROMPTS, 8, sampler="temperature", **kw)
    assert model.generate(PROMPTS, 8, sampler="top_k", top_k=10**6, **kw) == free
    greedy = model.generate(PROMPTS, 8, stop_token_ids=())
    assert model.generate(PROMPTS, 8, sampler="top_p", top_p=0.0, **kw) == greedy
    # Past Python's checks, the loop itself refuses what it cannot run.
    args = [tf.constant([[1, 2]]), tf.constant([[1, 1]]), 2, 2]
    with pytest.raises(tf.errors.InvalidArgumentError, match="temperature must be a finite"):
        decode(model, *args, float("nan"), 0, 1.0, tf.constant([0, 0]), tf.constant([0]))


def test_compiled_helpers_neither_keep_a_model_alive_nor_miss_the_speed_switch(monkeypatch):
    """generate() and perplexity_on() keep their compiled helpers per model, away from the model's
    attributes: the model is freed once the caller drops it, and switching the speed path after
    a first call traces again (the plain path then runs, with the same tokens)."""
    import gc
    import weakref

    from gpt2_tf.core import compiled
    from gpt2_tf.evaluation.loop import perplexity_on

    model = GPT2LanguageModel("tiny")
    x = {"token_ids": tf.constant([[1, 2, 3, 4]]), "padding_mask": tf.ones((1, 4), tf.int32)}
    batch = [(x, tf.constant([[2, 3, 4, 5]]), tf.ones((1, 4)))]
    fast = model.generate([[5, 6, 7]], 4)
    perplexity_on(model, batch)
    helpers = compiled._HELPERS[model]
    assert set(helpers) == {"generator", "evaluation_step"}
    assert not any(name.startswith("_gen") for name in vars(model))
    monkeypatch.setenv("GPT2_TF_PLAIN", "1")
    traces = helpers["generator"].traces
    assert model.generate([[5, 6, 7]], 4) == fast
    assert helpers["generator"].traces == traces + 1
    monkeypatch.delenv("GPT2_TF_PLAIN")
    ref = weakref.ref(model)
    del model, helpers
    gc.collect()
    assert ref() is None, "a compiled helper kept the model alive"


@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["one_row", "three_rows"])
def test_xla_decoding_gives_the_graph_tokens(pair, monkeypatch, prompts):
    """Greedy, the XLA decoding loop (plain layers inside XLA) gives the graph loop's tokens
    (speed kernels, and plain) and follows a later change of the weights. Sampled under XLA, a
    seed reproduces its own tokens (XLA's random kernels are not TensorFlow's: "auto" samples in
    graph)."""
    _, model = pair
    xla, graph = Generator(model, jit_compile=True), Generator(model, jit_compile=False)
    want = graph(prompts, 12)
    assert xla(prompts, 12) == want
    monkeypatch.setenv("GPT2_TF_PLAIN", "1")
    assert graph(prompts, 12) == want
    monkeypatch.delenv("GPT2_TF_PLAIN")
    sampled = [xla(prompts, 12, sampler="top_p", top_p=0.8, seed=s) for s in (3, 3, 4)]
    assert sampled[0] == sampled[1] != sampled[2]
    # A random model repeats its last token (h is near that token's own embedding); the final
    # LayerNorm's scale negated turns every logit around.
    gamma = model.backbone.ln_f.gamma
    before = gamma.numpy()
    try:  # new weights, same variables: no new trace
        gamma.assign(-before)
        assert xla(prompts, 12) == graph(prompts, 12) != want
    finally:
        gamma.assign(before)


def test_auto_decodes_one_greedy_row_under_xla_on_a_cpu(pair):
    from gpt2_tf.core import hardware

    _, model = pair
    if hardware._gpu_capabilities():
        pytest.skip("a GPU is visible: auto decodes greedy rows under XLA at every batch size")
    auto = Generator(model)
    assert auto.uses_xla(1) and not auto.uses_xla(2) and not auto.uses_xla(8)
    assert not auto.uses_xla(1, greedy=False)
    assert not Generator(model, jit_compile=False).uses_xla(1)
    assert Generator(model, jit_compile=True).uses_xla(8, greedy=False)
    with pytest.raises(ValueError, match="jit_compile must be"):
        Generator(model, jit_compile="yes")
