"""`make demo`: the main job on the embedded default, offline.

For now (core issue): load GPT-2's tokenizer, build a small model, tokenize a few texts, run a
forward pass and report the loss, save and reload the model, and switch LoRA on. Later stages
(prep, training, generation, evaluation, export) join this script as they land.
"""

from __future__ import annotations

import math
import os
import tempfile

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "tokenizer",
    None,
    "Tokenizer folder or hub id (default: GPT-2's vocabulary "
    "from $GPT2_TF_TOKENIZER, ../shared/data/gpt2_tokenizer, or the hub).",
)
flags.DEFINE_string("preset", "tiny", "GPT2Config preset of the randomly initialised model.")
flags.DEFINE_string("output_dir", "runs/demo", "Where the demo writes its model.")
flags.DEFINE_integer("seed", 0, "Random seed.")

TEXTS = [
    "GPT-2 is a transformer language model released by OpenAI in 2019.",
    "Fine-tuning adapts a pretrained model to a task with a little labelled data.",
    "i didnt feel humiliated",
]


def main(argv):
    del argv
    import keras
    import numpy as np

    from gpt2_tf import GPT2Config, GPT2LanguageModel, GPT2Tokenizer, enable_lora

    keras.utils.set_random_seed(FLAGS.seed)
    tokenizer = GPT2Tokenizer.from_pretrained(FLAGS.tokenizer)
    logging.info("tokenizer: %s (%d tokens)", tokenizer.source, tokenizer.vocab_size)
    ids = tokenizer.encode_batch(TEXTS)
    for text, row in zip(TEXTS, ids):
        print(f"{len(row):3d} tokens  {row[:8]}...  {text!r}")
    length = max(map(len, ids))
    token_ids = np.full((len(ids), length), tokenizer.eos_id, "int32")
    mask = np.zeros_like(token_ids)
    for i, row in enumerate(ids):
        token_ids[i, : len(row)], mask[i, : len(row)] = row, 1

    model = GPT2LanguageModel(GPT2Config.from_preset(FLAGS.preset))
    print(f"model: preset {FLAGS.preset}, {model.count_params():,} parameters")
    logits = model({"token_ids": token_ids, "padding_mask": mask})
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        token_ids[:, 1:], logits[:, :-1], sample_weight=mask[:, 1:]
    )
    print(
        f"next-token loss of the untrained model: {float(loss):.3f} "
        f"(uniform guessing: ln {tokenizer.vocab_size} = {math.log(tokenizer.vocab_size):.3f})"
    )

    os.makedirs(FLAGS.output_dir, exist_ok=True)
    folder = tempfile.mkdtemp(dir=FLAGS.output_dir, prefix="model-")
    model.save_pretrained(folder)
    again = GPT2LanguageModel.from_pretrained(folder)
    same = np.allclose(again({"token_ids": token_ids, "padding_mask": mask}), logits, atol=1e-5)
    print(f"saved to {folder} and reloaded: logits equal = {same}")
    enable_lora(again, rank=8)
    trainable = sum(int(np.prod(v.shape)) for v in again.trainable_weights)
    print(f"LoRA rank 8 on c_attn: {trainable:,} trainable of {again.count_params():,}")


if __name__ == "__main__":
    app.run(main)
