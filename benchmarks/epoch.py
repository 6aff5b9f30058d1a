"""The `epoch` group of `make bench` (issue 19): one epoch over a fixed set of real training rows,
the same model shape and precision for every system, each with its own way of batching.

Rows: the Dolly sample (instruction template, response-only loss) at seq_len 1024 and emotion
(classification) at 128, prepared once by gpt2_tf's prep, so every system trains on the same
token ids. Systems:
- gpt2_tf padded: today's path, every row at the full seq_len;
- gpt2_tf packed: several whole examples per row (`--packing`, the default), or for a classifier
  length buckets (each batch cropped to the smallest of a few lengths that holds it);
- Hugging Face: a PyTorch loop with its best standard option, `group_by_length` (the Trainer's
  LengthGroupedSampler: megabatches of 50 batches sorted by length) and dynamic padding to each
  batch's longest row. Its padding-free collator (`DataCollatorWithFlattening`) needs
  flash-attention kernels, which GPT-2 on CPU does not have: not run, and the row says so;
- keras-hub: `GPT2CausalLM`, whose preprocessor pads every row to the full sequence length (the
  loss weights are given directly so it covers the same response tokens). keras-hub has no GPT-2
  classifier: the emotion row says so.

Each figure: the epoch's wall time after one untimed warm-up step (tracing, compiling),
examples/s, real tokens/s (tokens of the examples themselves), and the padding share (computed
positions that hold no real token).
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from benchmarks.cases import SHARED

DATA = {  # task -> (gpt2_tf task, prep options, seq_len)
    "dolly": (
        "instruction_tuning",
        {"input_jsonl": os.path.join(SHARED, "dolly", "dolly_first743.jsonl")},
        1024,
    ),
    "emotion": ("classification_tuning", {"input": os.path.join(SHARED, "emotion")}, 128),
}


def examples(task: str, rows: int) -> tuple[str, list[dict]]:
    """Prepares the task's real data with gpt2_tf, then keeps the first `rows` training examples
    in a prepared folder of their own -> (that folder, the examples as token lists)."""
    import tensorflow as tf

    from gpt2_tf.core.reports import write_json
    from gpt2_tf.data.prep import PrepOptions, prepare
    from gpt2_tf.data.records import ShardedWriter, read_metadata, serialize, split_files
    from gpt2_tf.data.tasks import get_task
    from gpt2_tf.tokenizer.bpe import GPT2Tokenizer

    name, options, seq_len = DATA[task]
    tok = GPT2Tokenizer.from_pretrained(os.path.join(SHARED, "gpt2_tokenizer"))
    full = tempfile.mkdtemp()
    prepare(get_task(name), tok, PrepOptions(full, seq_len, task=options))
    meta = read_metadata(full)
    kept = []
    for record in tf.data.TFRecordDataset(split_files(full, "train")).take(rows):
        ex = tf.train.Example.FromString(record.numpy()).features.feature
        length = ex["length"].int64_list.value[0]
        item = {"ids": list(ex["input_ids"].int64_list.value[:length]), "length": length}
        if "label" in ex:
            item["label"] = ex["label"].int64_list.value[0]
        else:
            item["prompt_length"] = ex["prompt_length"].int64_list.value[0]
        kept.append(item)
    folder = tempfile.mkdtemp()
    with ShardedWriter(folder, 1) as writer:
        for i, e in enumerate(kept):
            ids = e["ids"] + [meta["pad_id"]] * (seq_len - e["length"])
            writer.write(
                "train",
                serialize(ids, e["length"], i, e.get("prompt_length"), e.get("label")),
                e["length"],
            )
            writer.write(
                "validation",
                serialize(ids, e["length"], i, e.get("prompt_length"), e.get("label")),
                e["length"],
            )
    write_json(os.path.join(folder, "metadata.json"), {**meta, "splits": writer.counts})
    return folder, kept


def _figures(seconds: float, examples: int, real: int, positions: int, steps: int) -> dict:
    """An epoch's figures: `examples` and `real` tokens trained on, `positions` computed."""
    return {
        "epoch_seconds": seconds,
        "steps": steps,
        "examples": examples,
        "examples_per_second": examples / seconds,
        "real_tokens_per_second": real / seconds,
        "padding_share": 1.0 - real / positions,
    }


def _local(t):
    """A one-device distributed value as its tensor."""
    return t.values[0] if hasattr(t, "values") and not hasattr(t, "numpy") else t


def _counted(kept: list[dict]) -> tuple[int, int]:
    return len(kept), sum(e["length"] for e in kept)


def epoch_ours(a: dict) -> dict:
    import dataclasses

    import tensorflow as tf

    from gpt2_tf.train.trainer import TrainConfig, Trainer

    folder, kept = examples(a["task"], a["rows"])
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    packing = a.get("packing", False)
    if packing and "packing" not in fields:
        raise RuntimeError("this gpt2_tf has no --packing")
    extra = {"packing": packing} if "packing" in fields else {}
    cfg = TrainConfig(
        data_dir=folder,
        output_dir=tempfile.mkdtemp(),
        init_from=a["preset"],
        batch_size=a["batch"],
        epochs=1,
        precision=a["precision"],
        strategy="one_device",
        dropout=0.0,
        num_samples=0,
        **extra,
    )
    trainer = Trainer(cfg)
    steps = trainer.epoch_steps(0)
    last = trainer.epoch_steps(1) - 1
    float(trainer.step(iter(trainer._epoch_dataset(1, last)))["loss"])  # warm-up
    iterator = iter(trainer._epoch_dataset(0, 0))
    start = time.perf_counter()
    for _ in range(steps):
        loss = trainer.step(iterator)["loss"]
    float(loss)
    seconds = time.perf_counter() - start
    # What the epoch trained on, read from its own batches (a packed epoch leaves out the last
    # partial batch of rows, as the padded one leaves out its last partial batch of examples).
    trained = real = positions = 0
    for x, _, _ in trainer._epoch_dataset(0, 0):
        mask = _local(x["padding_mask"])
        real += int(tf.reduce_sum(mask))
        positions += int(tf.size(mask))
        if "segment_ids" in x:  # packed: the examples are the segments of each row
            trained += int(tf.reduce_sum(tf.reduce_max(_local(x["segment_ids"]), 1)))
        else:
            trained += int(tf.shape(mask)[0])
    return _figures(seconds, trained, real, positions, steps)


def _length_grouped(lengths: list[int], batch: int, seed: int) -> list[list[int]]:
    """Hugging Face's LengthGroupedSampler: a random permutation cut into megabatches of 50
    batches, each sorted by length (longest first), then cut into batches."""
    order = np.random.default_rng(seed).permutation(len(lengths)).tolist()
    mega = 50 * batch
    out = []
    for i in range(0, len(order), mega):
        group = sorted(order[i : i + mega], key=lambda j: -lengths[j])
        out += [group[k : k + batch] for k in range(0, len(group), batch)]
    return [b for b in out if len(b) == batch]  # drop_last, as gpt2_tf's epoch does


def epoch_hf(a: dict) -> dict:
    import torch
    import transformers

    from benchmarks.cases import _preset

    torch.manual_seed(0)
    _, kept = examples(a["task"], a["rows"])
    c = _preset(a["preset"])
    config = transformers.GPT2Config(
        vocab_size=c.vocab_size,
        n_positions=max(c.n_positions, DATA[a["task"]][2]),
        n_embd=c.n_embd,
        n_layer=c.n_layer,
        n_head=c.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        pad_token_id=50256,
        num_labels=6,
    )
    classifier = "label" in kept[0]
    cls = transformers.GPT2ForSequenceClassification if classifier else transformers.GPT2LMHeadModel
    model = cls(config)
    dtype = torch.bfloat16 if a["precision"] == "mixed_bfloat16" else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    batches = _length_grouped([e["length"] for e in kept], a["batch"], 0)

    def batch_tensors(idx):
        longest = max(kept[j]["length"] for j in idx)
        ids = torch.full((len(idx), longest), 50256, dtype=torch.long)
        mask = torch.zeros((len(idx), longest), dtype=torch.long)
        labels = torch.full((len(idx), longest), -100, dtype=torch.long)
        for r, j in enumerate(idx):
            e = kept[j]
            ids[r, : e["length"]] = torch.tensor(e["ids"])
            mask[r, : e["length"]] = 1
            if not classifier:  # HF shifts labels itself: label t is token t's own id
                start = max(e["prompt_length"], 1)
                labels[r, start : e["length"]] = torch.tensor(e["ids"][start:])
        if classifier:
            labels = torch.tensor([kept[j]["label"] for j in idx])
        return ids, mask, labels, longest

    def step(idx):
        ids, mask, labels, longest = batch_tensors(idx)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return longest

    model.train()
    step(batches[-1])  # warm-up
    start = time.perf_counter()
    positions = sum(step(b) * a["batch"] for b in batches)
    seconds = time.perf_counter() - start
    ran = [kept[j] for b in batches for j in b]
    return {
        **_figures(seconds, *_counted(ran), positions, len(batches)),
        "padding_free_collator": "not run: DataCollatorWithFlattening needs flash-attention "
        "kernels, which GPT-2 on CPU does not have",
    }


def epoch_keras_hub(a: dict) -> dict:
    if a["task"] != "dolly":
        raise RuntimeError("keras-hub has no GPT-2 classifier (GPT2CausalLM only)")
    import keras
    import keras_hub

    from benchmarks.cases import _preset

    folder, kept = examples(a["task"], a["rows"])
    del folder
    c = _preset(a["preset"])
    seq_len = DATA[a["task"]][2]
    keras.utils.set_random_seed(0)
    if a["precision"] != "float32":
        keras.config.set_dtype_policy(a["precision"])
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=c.vocab_size,
        num_layers=c.n_layer,
        num_heads=c.n_head,
        hidden_dim=c.n_embd,
        intermediate_dim=4 * c.n_embd,
        dropout=0.0,
        max_sequence_length=max(c.n_positions, seq_len),
    )
    model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-4, weight_decay=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
    )
    # What GPT2CausalLMPreprocessor makes (every row padded to sequence_length), from the same
    # ids, with the loss on the response tokens as gpt2_tf's.
    n = len(kept) // a["batch"] * a["batch"]
    ids = np.full((n, seq_len), 50256, np.int32)
    mask = np.zeros((n, seq_len), np.int32)
    y = np.full((n, seq_len), 50256, np.int32)
    w = np.zeros((n, seq_len), np.float32)
    for r, e in enumerate(kept[:n]):
        ids[r, : e["length"]] = e["ids"]
        mask[r, : e["length"]] = 1
        y[r, : e["length"] - 1] = e["ids"][1:]
        w[r, max(e["prompt_length"], 1) - 1 : e["length"] - 1] = 1.0
    x = {"token_ids": ids, "padding_mask": mask}
    b = a["batch"]
    model.train_on_batch({k: v[:b] for k, v in x.items()}, y[:b], w[:b])  # warm-up
    start = time.perf_counter()
    for i in range(0, n, b):
        model.train_on_batch({k: v[i : i + b] for k, v in x.items()}, y[i : i + b], w[i : i + b])
    seconds = time.perf_counter() - start
    return _figures(seconds, *_counted(kept[:n]), n * seq_len, n // b)


CASES = (epoch_ours, epoch_hf, epoch_keras_hub)


SYSTEMS = {  # (case, packing) -> the name a table gives it
    ("epoch_ours", True): "gpt2_tf packed (LM) / length buckets (classifier)",
    ("epoch_ours", False): "gpt2_tf padded",
    ("epoch_hf", False): "HF, group_by_length + dynamic padding",
    ("epoch_keras_hub", False): "keras-hub, fixed length",
}


def plan(quick: bool) -> list[tuple]:
    """(group, case, variant, lora, args) rows, as `bench.plan` gives them: variant is the task.
    `batch` is examples per step, except for gpt2_tf packed, where it is packed rows (each
    holding several examples), as `--batch_size` means there."""
    size = dict(preset="tiny") if quick else dict(preset="124M")
    runs = {
        "dolly": dict(rows=16, batch=2) if quick else dict(rows=64, batch=4),
        "emotion": dict(rows=64 if quick else 256, batch=32),
    }
    return [
        (
            "epoch",
            case,
            task,
            None,
            dict(task=task, precision="float32", packing=packing, **size, **r),
        )
        for task, r in runs.items()
        for case, packing in SYSTEMS
    ]


def table(rows: list[dict]) -> list[str]:
    """The epoch group's Markdown table: per task and system, the epoch's figures, gpt2_tf packed
    against its padded path and against the best other system (by real tokens/s)."""
    if not rows:
        return []
    out = [
        "",
        "One epoch over real rows (same model shape and precision; see benchmarks/epoch.py):",
        "",
        "| rows | system | epoch s | examples/s | real tokens/s | padding share | packed / this |",
        "|---|---|---|---|---|---|---|",
    ]
    for task in dict.fromkeys(r["variant"] for r in rows):
        same = [r for r in rows if r["variant"] == task]
        packed = next(
            (r["result"].get("real_tokens_per_second") for r in same if r["args"].get("packing")),
            None,
        )
        for r in same:
            res, name = r["result"], SYSTEMS[(r["case"], bool(r["args"].get("packing")))]
            n = f"{task}, {r['args']['rows']} rows"
            if "real_tokens_per_second" not in res:
                why = res.get("skipped") or f"not run: {res.get('error', '')[:90]}"
                out.append(f"| {n} | {name} | {why} | | | | |")
                continue
            value = res["real_tokens_per_second"]
            ratio = f"{packed / value:.2f}x" if packed and not r["args"].get("packing") else ""
            out.append(
                f"| {n} | {name} | {res['epoch_seconds']:.1f} | {res['examples_per_second']:.1f}"
                f" | {value:,.0f} | {100 * res['padding_share']:.0f}% | {ratio} |"
            )
    return out
