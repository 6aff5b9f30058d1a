"""One benchmark case per process (so peak memory is that case's): prints one JSON line.

    python -m benchmarks.cases CASE '{"key": value, ...}'

Every timing is the median of `reps` runs after `warmup` runs. Models have random weights in
the GPT-2 124M shape unless `preset` says otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import statistics
import sys
import time

SHARED = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data"
)


# Set by `bench.run_in_turns`: "<read fd>,<write fd>" of this process's two pipes to it.
TURN_ENV = "GPT2_TF_BENCH_TURN"


@contextlib.contextmanager
def turn():
    """Runs the block in this process's turn: under `bench.run_in_turns` it says it waits (one
    byte), blocks until the bench hands it the turn, and the block runs while every other system
    of the row waits in here. Alone (no TURN_ENV), the block just runs."""
    fds = os.environ.get(TURN_ENV)
    if fds:
        read_fd, write_fd = (int(x) for x in fds.split(","))
        os.write(write_fd, b"w")
        if os.read(read_fd, 1) != b"g":
            raise SystemExit("the bench closed the turn pipe")
    yield


def timed(fn, warmup: int, reps: int) -> float:
    """The median seconds of `reps` calls of fn after `warmup` calls: the warm-up and each timed
    call a turn of their own (`turn`)."""
    if warmup:
        with turn():
            for _ in range(warmup):
                fn()
    times = []
    for _ in range(reps):
        with turn():
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_ticks() -> tuple[int, int]:
    """(steal, total) CPU ticks of the whole machine so far, from /proc/stat ((0, 0) elsewhere).
    On a shared VM the hypervisor can take half the CPU away ("steal"); the share taken during a
    case goes into its result, so a slow figure can be told from a slow machine."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0, 0
    return fields[7], sum(fields)


def steal_pct(start: tuple[int, int]) -> float | None:
    steal, total = cpu_ticks()
    return 100 * (steal - start[0]) / (total - start[1]) if total > start[1] else None


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- gpt2_tf -------------------------------------------------------------------------------
def _synthetic_lm_data(folder: str, seq_len: int, examples: int, vocab: int = 50257) -> str:
    """A prepared LM dataset of random tokens (loss on every token, as in HF's benchmark)."""
    import numpy as np

    from gpt2_tf.core.reports import write_json
    from gpt2_tf.data.records import ShardedWriter, serialize

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    with ShardedWriter(folder, 1) as writer:
        for i in range(examples):
            writer.write(
                "train", serialize(rng.integers(0, vocab, seq_len).tolist(), seq_len, i, 0), seq_len
            )
            writer.write("validation", serialize([1] * seq_len, seq_len, i, 0), seq_len)
    write_json(
        os.path.join(folder, "metadata.json"),
        {
            "task": "bench",
            "kind": "lm",
            "seq_len": seq_len,
            "pad_id": 50256,
            "eos_id": 50256,
            "splits": writer.counts,
            "tokenizer": {"source": None, "sha256": ""},
        },
    )
    return folder


def row_size(preset: str) -> dict:
    """A training row's model and length: GPT-2 at 256 tokens, or the tiny model (128
    positions) at 64, as `bench --quick` runs it."""
    return dict(preset=preset, seq_len=64 if preset == "tiny" else 256)


def train_step_ours(a: dict, steps: int):
    """gpt2_tf's training step as `train_ours` times it (a `Trainer` on `steps` batches of
    synthetic full-length rows): (a call running one step, the trainer, the batch iterator the
    call reads)."""
    import tempfile

    from gpt2_tf.train.trainer import TrainConfig, Trainer

    data = _synthetic_lm_data(tempfile.mkdtemp(), a["seq_len"], a["batch"] * (steps + 1))
    cfg = TrainConfig(
        data_dir=data,
        output_dir=tempfile.mkdtemp(),
        init_from=a["preset"],
        batch_size=a["batch"],
        max_steps=steps,
        precision=a["precision"],
        lora_rank=a["lora_rank"],
        strategy="one_device",
        dropout=0.0,
        num_samples=0,
        clipnorm=1.0,
        weight_decay=0.01,
        packing=False,  # the padded step (full-length rows: packing adds only its mask)
        jit_compile=a.get("jit_compile", "auto"),
    )
    trainer = Trainer(cfg)
    iterator = iter(trainer._epoch_dataset(0, 0))
    return (lambda: float(trainer.step(iterator)["loss"])), trainer, iterator


def _train_figures(step, a: dict) -> dict:
    """Seconds per step and tokens/s of a system's `train_step_*`, timed in the bench's turns."""
    seconds = timed(step, a["warmup"], a["reps"])
    return {"seconds_per_step": seconds, "tokens_per_second": a["batch"] * a["seq_len"] / seconds}


def train_ours(a: dict) -> dict:
    step, trainer, _ = train_step_ours(a, a["warmup"] + a["reps"])
    return {
        **_train_figures(step, a),
        "parameters": trainer.model.count_params(),
        "jit_compile": trainer.cfg.jit_compile,
    }


def _ours_model(preset: str):
    import keras

    from gpt2_tf import GPT2Config, GPT2LanguageModel

    keras.utils.set_random_seed(0)
    return GPT2LanguageModel(GPT2Config.from_preset(preset))


def per_batch(a: dict, measure) -> dict:
    """Runs `measure(batch)` for each of `a["batches"]` in order, in this process (one import,
    one model). Each figure carries the peak RSS so far: batch 1 runs first, so its figure is
    its own."""
    out = []
    for batch in a["batches"]:
        start = cpu_ticks()
        out.append({**measure(batch), "peak_rss_mb": peak_rss_mb(), "steal_pct": steal_pct(start)})
    return {"per_batch": out}


def generate_ours(a: dict) -> dict:
    import numpy as np

    from gpt2_tf.train.distribute import configure_cpu_threads

    configure_cpu_threads("one_device")  # as pipelines/<task>/test.py does
    model = _ours_model(a["preset"])

    def measure(batch):
        rng = np.random.default_rng(0)
        prompts = rng.integers(0, 50000, (batch, a["prompt_len"])).tolist()
        run = lambda: model.generate(prompts, a["new_tokens"], stop_token_ids=())  # noqa: E731
        seconds = timed(run, a["warmup"], a["reps"])
        return {"seconds": seconds, "new_tokens_per_second": batch * a["new_tokens"] / seconds}

    return per_batch(a, measure)


def generate_saved_model(a: dict) -> dict:
    import tempfile

    import numpy as np
    import tensorflow as tf

    from gpt2_tf.serve.export import export_saved_model
    from gpt2_tf.tokenizer.bpe import GPT2Tokenizer

    tok = GPT2Tokenizer.from_pretrained(os.path.join(SHARED, "gpt2_tokenizer"))
    path = export_saved_model(_ours_model(a["preset"]), tok, tempfile.mkdtemp(), version=1)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    args = dict(
        max_new_tokens=tf.constant(a["new_tokens"]),
        temperature=tf.constant(0.0),
        top_k=tf.constant(0),
        top_p=tf.constant(1.0),
        seed=tf.constant(0),
    )

    def measure(batch):
        words = np.random.default_rng(0).integers(1000, 20000, (batch, a["prompt_len"]))
        prompts = tf.constant([tok.decode(row) for row in words.tolist()])
        # Greedy may stop early at <|endoftext|>; count the tokens actually produced.
        produced = int(tf.reduce_sum(serve(prompts=prompts, **args)["lengths"]))
        seconds = timed(lambda: serve(prompts=prompts, **args), a["warmup"], a["reps"])
        return {"seconds": seconds, "new_tokens_per_second": produced / seconds}

    return per_batch(a, measure)


# ---- Hugging Face transformers + PyTorch ---------------------------------------------------
def _preset(preset: str):
    """gpt2_tf's preset shapes, read from `gpt2_tf/model/config.py` alone: importing the `gpt2_tf`
    package imports TensorFlow, which would add its start-up time and about 0.5 GB of resident
    memory to the Hugging Face figures."""
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "gpt2_tf", "model")
    spec = importlib.util.spec_from_file_location("_gpt2_tf_config", f"{path}/config.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module.GPT2Config.from_preset(preset)


def _hf_model(preset: str):
    import torch
    import transformers

    c = _preset(preset)
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_embd=c.n_embd,
        n_positions=c.n_positions,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return transformers.GPT2LMHeadModel(config)


def train_step_hf(a: dict):
    """Hugging Face's training step as `train_hf` times it (PEFT's LoRA on c_attn, AdamW,
    clipping, autocast under mixed_bfloat16): a call running one step."""
    import contextlib

    import torch

    torch.set_num_threads(os.cpu_count())
    model = _hf_model(a["preset"]).train()
    if a["lora_rank"]:
        import peft

        model = peft.get_peft_model(
            model,
            peft.LoraConfig(
                r=a["lora_rank"],
                lora_alpha=a["lora_rank"],
                target_modules=["c_attn"],
                fan_in_fan_out=True,
            ),
        )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    ids = torch.randint(0, 50257, (a["batch"], a["seq_len"]))
    bf16 = a["precision"] == "mixed_bfloat16"

    def step():
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def train_hf(a: dict) -> dict:
    return _train_figures(train_step_hf(a), a)


def generate_hf(a: dict) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count())
    model = _hf_model(a["preset"]).eval()

    def measure(batch):
        ids = torch.randint(0, 50000, (batch, a["prompt_len"]))
        mask = torch.ones_like(ids)

        def run(new_tokens=a["new_tokens"]):
            with torch.no_grad():
                model.generate(
                    ids,
                    attention_mask=mask,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=False,
                    pad_token_id=50256,
                )

        # PyTorch runs eagerly (nothing to compile per shape): a warm-up of a few tokens warms
        # it as well as a full one, and saves the bench about 20 s.
        with turn():
            for _ in range(a["warmup"]):
                run(8)
        seconds = timed(run, 0, a["reps"])
        return {"seconds": seconds, "new_tokens_per_second": batch * a["new_tokens"] / seconds}

    return per_batch(a, measure)


# ---- keras-hub -----------------------------------------------------------------------------
def _keras_hub_lm(preset: str, precision: str):
    import keras
    import keras_hub

    keras.mixed_precision.set_dtype_policy(precision)
    keras.utils.set_random_seed(0)
    c = _preset(preset)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=c.vocab_size,
        num_layers=c.n_layer,
        num_heads=c.n_head,
        hidden_dim=c.n_embd,
        intermediate_dim=4 * c.n_embd,
        max_sequence_length=c.n_positions,
        dropout=0.0,
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def train_step_keras_hub(a: dict):
    """keras-hub's training step as `train_keras_hub` times it (`GPT2CausalLM.train_on_batch`,
    its own LoRA, AdamW, clipping, no XLA): a call running one step."""
    import keras
    import numpy as np

    lm = _keras_hub_lm(a["preset"], a["precision"])
    if a["lora_rank"]:
        lm.backbone.enable_lora(a["lora_rank"])
    opt = keras.optimizers.AdamW(1e-4, weight_decay=0.01, global_clipnorm=1.0)
    lm.compile(
        optimizer=opt,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
        jit_compile=False,
    )
    ids = (
        np.random.default_rng(0).integers(0, 50257, (a["batch"], a["seq_len"] + 1)).astype("int32")
    )
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones_like(ids[:, :-1])}
    return lambda: lm.train_on_batch(x, ids[:, 1:])


def train_keras_hub(a: dict) -> dict:
    return _train_figures(train_step_keras_hub(a), a)


def generate_keras_hub(a: dict) -> dict:
    import numpy as np

    lm = _keras_hub_lm(a["preset"], "float32")
    total = a["prompt_len"] + a["new_tokens"]

    def measure(batch):
        ids = np.zeros((batch, total), "int32")
        ids[:, : a["prompt_len"]] = np.random.default_rng(0).integers(
            0, 50000, (batch, a["prompt_len"])
        )
        mask = np.zeros_like(ids)
        mask[:, : a["prompt_len"]] = 1
        inputs = {"token_ids": ids, "padding_mask": mask}
        run = lambda: lm.generate(inputs, stop_token_ids=None)  # noqa: E731 - greedy by default
        seconds = timed(run, a["warmup"], a["reps"])
        return {"seconds": seconds, "new_tokens_per_second": batch * a["new_tokens"] / seconds}

    return per_batch(a, measure)


# ---- tokenizers, prep, the machine ---------------------------------------------------------
def _texts() -> list[str]:
    with open(os.path.join(SHARED, "emotion", "train.txt"), encoding="utf-8") as f:
        return [line.rsplit(";", 1)[0] for line in f][1:]


def tokenize(a: dict) -> dict:
    texts, vocab = _texts(), os.path.join(SHARED, "gpt2_tokenizer")
    if a["system"] == "gpt2_tf":
        from gpt2_tf.tokenizer.bpe import GPT2Tokenizer

        tok = GPT2Tokenizer.from_pretrained(vocab)
        run = lambda: tok.encode_batch(texts)  # noqa: E731
    elif a["system"] == "gpt2_tf_graph":
        import tensorflow as tf

        from gpt2_tf.tokenizer.bpe import GPT2Tokenizer

        graph = GPT2Tokenizer.from_pretrained(vocab).graph
        batch = tf.constant(texts)
        encode = tf.function(lambda t: graph.encode(t))
        run = lambda: encode(batch)  # noqa: E731
    elif a["system"] == "tiktoken":
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tests"))
        from conftest import reference_encoding

        enc = reference_encoding()
        run = lambda: enc.encode_ordinary_batch(texts)  # noqa: E731
    else:  # Hugging Face tokenizers through transformers' fast GPT-2 tokenizer
        import transformers

        tok = transformers.GPT2TokenizerFast(
            os.path.join(vocab, "vocab.json"), os.path.join(vocab, "merges.txt")
        )
        run = lambda: tok(texts)["input_ids"]  # noqa: E731
    seconds = timed(run, a["warmup"], a["reps"])
    return {"seconds": seconds, "texts_per_second": len(texts) / seconds}


def prep(a: dict) -> dict:
    import tempfile

    from gpt2_tf.data.prep import PrepOptions, prepare
    from gpt2_tf.data.tasks import get_task
    from gpt2_tf.tokenizer.bpe import GPT2Tokenizer

    tok = GPT2Tokenizer.from_pretrained(os.path.join(SHARED, "gpt2_tokenizer"))
    task, options, seq_len = {
        "emotion": ("classification_tuning", {"input": os.path.join(SHARED, "emotion")}, 128),
        "dolly": (
            "instruction_tuning",
            {"input_jsonl": os.path.join(SHARED, "dolly", "dolly_first743.jsonl")},
            512,
        ),
    }[a["data"]]
    rows = []

    def run():
        meta = prepare(get_task(task), tok, PrepOptions(tempfile.mkdtemp(), seq_len, task=options))
        rows.append(meta["rows"]["read"])

    seconds = timed(run, a["warmup"], a["reps"])
    return {"seconds": seconds, "rows": rows[-1], "examples_per_second": rows[-1] / seconds}


def turns_probe(a: dict) -> dict:
    """`timed` over a sleep of a["sleep"] seconds, each call's (start, end) wall-clock times:
    what `tests/test_bench.py` reads to check `bench.run_in_turns`."""
    spans = []

    def nap():
        start = time.time()
        time.sleep(a["sleep"])
        spans.append((start, time.time()))

    timed(nap, a["warmup"], a["reps"])
    return {"spans": spans}


def matmul(a: dict) -> dict:
    """The machine's limits, in TensorFlow: dense matrix-multiply rate (FLOP/s) in float32 and
    bfloat16, and memory bandwidth (bytes/s read by a sum over 500 MB, the size of GPT-2 124M's
    float32 weights, which decoding at batch 1 reads once per token). With TensorFlow as gpt2_tf
    sets it up (oneDNN on x86-64 with AVX2, `hardware.prefer_onednn`): the rate its training
    runs at."""
    __import__("gpt2_tf")  # before TensorFlow, so that its oneDNN choice applies
    import tensorflow as tf

    n, out = a["n"], {"n": a["n"]}
    for dtype in a.get("dtypes", ("float32", "bfloat16")):
        x = tf.cast(tf.random.normal([n, n], dtype=tf.float32), dtype)
        fn = tf.function(lambda x=x: tf.reduce_sum(tf.cast(tf.matmul(x, x)[:1, :1], tf.float32)))
        seconds = timed(lambda fn=fn: float(fn()), 2, a["reps"])
        out[dtype] = 2 * n**3 / seconds
    big = tf.ones([125_000_000], tf.float32)
    total = tf.function(lambda: tf.reduce_sum(big))
    out["bandwidth"] = 500e6 / timed(lambda: float(total()), 2, a["reps"])
    return out


CASES = {
    f.__name__: f
    for f in (
        train_ours,
        train_hf,
        train_keras_hub,
        generate_ours,
        generate_saved_model,
        generate_hf,
        generate_keras_hub,
        tokenize,
        prep,
        matmul,
        turns_probe,
    )
}

if __name__ == "__main__":
    from benchmarks import epoch

    CASES.update({f.__name__: f for f in epoch.CASES})
    name, args = sys.argv[1], json.loads(sys.argv[2])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    start = cpu_ticks()
    result = CASES[name](args)
    result = {"peak_rss_mb": peak_rss_mb(), "steal_pct": steal_pct(start), **result}
    print("RESULT " + json.dumps(result), flush=True)
    os._exit(0)  # skip tearing down gigabytes of TensorFlow / PyTorch state (a second or two)
