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

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "tokenizer",
    None,
    "Tokenizer folder or hub id (default: GPT-2's vocabulary "
    "from $GPT2_TF_TOKENIZER, ../shared/data/gpt2_tokenizer, or the hub).",
)
flags.DEFINE_string("init_from", "tiny", "Preset (random weights), pretrained folder or hub id.")
flags.DEFINE_string("output_dir", "runs/demo", "Where the demo writes data, checkpoints, models.")
flags.DEFINE_integer("seq_len", 256, "Tokens per example.")
flags.DEFINE_integer("epochs", 10, "Passes over the sample's training split.")
flags.DEFINE_float("learning_rate", 3e-3, "Peak learning rate.")
flags.DEFINE_integer("max_new_tokens", 40, "Tokens generated per held-out instruction.")
flags.DEFINE_integer("seed", 0, "Random seed.")


def main(argv):
    del argv
    import tensorflow as tf

    from gpt2_tf import evaluation
    from gpt2_tf.data import split_prompts
    from gpt2_tf.export import export_saved_model
    from gpt2_tf.generation import generate
    from gpt2_tf.prep import PrepOptions, prepare
    from gpt2_tf.tasks import get_task
    from gpt2_tf.tasks.instruction import BUNDLED
    from gpt2_tf.tokenizer import GPT2Tokenizer
    from gpt2_tf.training import TrainConfig, Trainer

    start = time.monotonic()
    shutil.rmtree(FLAGS.output_dir, ignore_errors=True)  # the demo always starts afresh
    tokenizer = GPT2Tokenizer.from_pretrained(FLAGS.tokenizer)
    data_dir = os.path.join(FLAGS.output_dir, "tfrecords")
    prep = PrepOptions(
        data_dir, seq_len=FLAGS.seq_len, seed=FLAGS.seed, task={"input_jsonl": BUNDLED}
    )
    prepare(get_task("instruction_tuning"), tokenizer, prep)

    cfg = TrainConfig(
        data_dir=data_dir,
        output_dir=os.path.join(FLAGS.output_dir, "run"),
        init_from=FLAGS.init_from,
        epochs=FLAGS.epochs,
        batch_size=8,
        learning_rate=FLAGS.learning_rate,
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

    prompts = split_prompts(data_dir, "test", 4)  # held out from training
    outputs = generate(
        trainer.model, prompts, FLAGS.max_new_tokens, stop_token_ids=[tokenizer.eos_id]
    )
    for prompt, out in zip(prompts, outputs):
        print(f"\n{tokenizer.decode(prompt)}{tokenizer.decode(out)!r}")
    report = evaluation.run(
        evaluation.EvalConfig(
            model_dir=os.path.join(cfg.output_dir, "final"), num_generations=4, max_new_tokens=24
        )
    )
    for name, m in report["models"].items():
        shown = ", ".join(f"{k} {v:.3g}" for k, v in m.items() if isinstance(v, float))
        print(f"evaluation ({name}): {shown}")
    print(f"report: {cfg.output_dir}/eval/report.md")

    export = export_saved_model(trainer.model, tokenizer, os.path.join(FLAGS.output_dir, "exports"))
    serve = tf.saved_model.load(export).signatures["serving_default"]
    reply = serve(
        prompts=tf.constant([tokenizer.decode(prompts[0])]),
        max_new_tokens=tf.constant(16),
        temperature=tf.constant(0.0),
        top_k=tf.constant(0),
        top_p=tf.constant(1.0),
        seed=tf.constant(0),
    )
    text, n = reply["outputs"][0].numpy().decode(), int(reply["lengths"][0])
    print(f"\nSavedModel {export} (string in, string out): {text!r} ({n} tokens, EOT included)")
    print(f"\ndemo finished in {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    app.run(main)
