"""`make demo`: the main job end to end on the embedded default, offline.

Prep the instruction sample bundled with gpt2_tf into TFRecords, fine-tune a small randomly
initialised GPT-2 on it (response-only loss), generate answers to held-out instructions,
evaluate it against its untrained start (report in runs/demo/run/eval), and export a SavedModel
that answers a string with a string.
With --init_from=gpt2 (online) or a pretrained folder the same run fine-tunes real GPT-2.
"""

from __future__ import annotations

import os
import shutil
import time

from absl import flags

from gpt2_tf import cli

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "tokenizer",
    None,
    "Tokenizer folder or hub id (default: $GPT2_TF_TOKENIZER, else GPT-2's vocabulary shipped "
    "with gpt2_tf).",
)
flags.DEFINE_string("init_from", "tiny", "Preset (random weights), pretrained folder or hub id.")
flags.DEFINE_string("output_dir", "runs/demo", "Where the demo writes data, checkpoints, models.")
flags.DEFINE_integer("seq_len", 256, "Tokens per example.")
flags.DEFINE_integer(
    "epochs",
    None,
    "Passes over the sample's training split (default: 10 from random weights, "
    "3 for pretrained GPT-2).",
)
flags.DEFINE_float(
    "learning_rate",
    None,
    "Peak learning rate (default: 3e-3 from random weights, 5e-5 for "
    "pretrained GPT-2, which a random model's rate would wreck).",
)
flags.DEFINE_integer("max_new_tokens", 40, "Tokens generated per held-out instruction.")
flags.DEFINE_integer("seed", 0, "Random seed.")


def main(argv):
    del argv
    import tensorflow as tf

    from gpt2_tf.analyses import evaluate
    from gpt2_tf.core.reports import md_cell
    from gpt2_tf.core.run_folder import EVAL, FINAL, REPORT
    from gpt2_tf.data.prep import PrepOptions, prepare
    from gpt2_tf.data.records import split_prompts
    from gpt2_tf.data.tasks import get_task
    from gpt2_tf.data.tasks.instruction import BUNDLED
    from gpt2_tf.model.config import PRESETS
    from gpt2_tf.model.generation import generate
    from gpt2_tf.serve.export import export_saved_model
    from gpt2_tf.tokenizer.bpe import GPT2Tokenizer
    from gpt2_tf.train.trainer import TrainConfig, Trainer

    start = time.monotonic()
    shutil.rmtree(FLAGS.output_dir, ignore_errors=True)  # the demo always starts afresh
    tokenizer = GPT2Tokenizer.from_pretrained(FLAGS.tokenizer)
    data_dir = os.path.join(FLAGS.output_dir, "tfrecords")
    prep = PrepOptions(
        data_dir, seq_len=FLAGS.seq_len, seed=FLAGS.seed, task={"input_jsonl": BUNDLED}
    )
    prepare(get_task("instruction_tuning"), tokenizer, prep)

    from_scratch = FLAGS.init_from in PRESETS
    cfg = TrainConfig(
        data_dir=data_dir,
        output_dir=os.path.join(FLAGS.output_dir, "run"),
        init_from=FLAGS.init_from,
        epochs=FLAGS.epochs or (10 if from_scratch else 3),
        batch_size=8,
        learning_rate=FLAGS.learning_rate or (3e-3 if from_scratch else 5e-5),
        warmup_steps=4,
        log_every=8,
        seed=FLAGS.seed,
        tokenizer=tokenizer.source,
    )
    trainer = Trainer(cfg)
    before = trainer.evaluate()["loss"]
    result = trainer.run()
    after = result["validation"]["loss"]
    print(
        f"\nvalidation loss (response tokens): {before:.3f} before -> {after:.3f} after "
        f"{result['steps']} steps; model saved in {cfg.output_dir}/final"
    )

    print(f"\n{describe_model(FLAGS.init_from, trainer.model, result['steps'])}")
    prompts = split_prompts(data_dir, "test", 4)  # held out from training
    stop = [tokenizer.eos_id]
    greedy = generate(trainer.model, prompts, FLAGS.max_new_tokens, stop_token_ids=stop)
    sampled = generate(
        trainer.model,
        prompts,
        FLAGS.max_new_tokens,
        sampler="top_p",
        temperature=0.8,
        top_p=0.9,
        seed=FLAGS.seed,
        stop_token_ids=stop,
    )
    print("Held-out instructions, greedy and sampled (top_p 0.9, temperature 0.8):")
    for prompt, g, x in zip(prompts, greedy, sampled):
        print(f"\n{tokenizer.decode(prompt)}")
        print(f"  greedy:  {shown(tokenizer, g)}")
        print(f"  sampled: {shown(tokenizer, x)}")
    report = evaluate.run(
        evaluate.EvalConfig(
            model_dir=os.path.join(cfg.output_dir, FINAL), num_generations=4, max_new_tokens=24
        )
    )
    print()
    for name, m in report["models"].items():
        values = ", ".join(f"{k} {md_cell(v)}" for k, v in m.items() if _number(v))
        print(f"evaluation ({name}): {values}")  # md_cell: n/a, never a raw nan
    if any("n/a" in md_cell(v) for m in report["models"].values() for v in m.values()):
        print("n/a: local coherence needs a generation of two sentences or more")
    print(f"report: {os.path.join(cfg.output_dir, EVAL, REPORT)}")

    export = export_saved_model(trainer.model, tokenizer, os.path.join(FLAGS.output_dir, "exports"))
    serve = tf.saved_model.load(export).signatures["serving_default"]
    print(f"\nSavedModel {export} (string in, string out), the first instruction:")
    for name, temperature, top_p in (("greedy", 0.0, 1.0), ("sampled", 0.8, 0.9)):
        reply = serve(
            prompts=tf.constant([tokenizer.decode(prompts[0])]),
            max_new_tokens=tf.constant(16),
            temperature=tf.constant(temperature),
            top_k=tf.constant(0),
            top_p=tf.constant(top_p),
            seed=tf.constant(FLAGS.seed),
        )
        text, n = reply["outputs"][0].numpy().decode(), int(reply["lengths"][0])
        ended = " (ended at <|endoftext|>)" if not text.strip() else ""
        print(f"  {name}: {text!r}{ended}, {n} tokens with the end token")
    print(f"\ndemo finished in {time.monotonic() - start:.0f} s")


def describe_model(init_from: str, model, steps: int) -> str:
    """One line: what was trained, what to expect of it, and how to fine-tune real GPT-2."""
    from gpt2_tf.model.config import PRESETS

    c, params = model.config, model.count_params()
    if init_from in PRESETS:
        what = (
            f"Model: a {init_from} GPT-2 ({c.n_layer} layers, {c.n_embd} wide, {params:,} "
            f"parameters) from random weights, trained {steps} steps on the bundled sample: it "
            "learns the template, not English, so greedy decoding often ends at once "
            "(<|endoftext|>) and samples read as word salad."
        )
    else:
        what = f"Model: {init_from} ({params:,} parameters), fine-tuned {steps} steps."
    return (
        f"{what} To fine-tune real GPT-2: `make demo MODEL=gpt2` (online), or MODEL=<folder> "
        "holding Hugging Face or OpenAI GPT-2 weights."
    )


def shown(tokenizer, ids: list[int]) -> str:
    """A continuation for the terminal: its text, or what ended it when it is empty."""
    text = tokenizer.decode([t for t in ids if t != tokenizer.eos_id])
    if text.strip():
        return repr(text)
    return "(ended at once: <|endoftext|>)" if ids else "(nothing)"


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


if __name__ == "__main__":
    cli.run(main)
