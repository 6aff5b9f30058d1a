"""absl flags shared by the pipelines, and the calls they make into the library.

Every fact about a task lives in its `TaskSpec` (gpt2_tf/data/tasks/): `define_prep_flags(task)`
defines the common prep flags and the task's own `prep_flags` (--seq_len defaults to its
`seq_len`); `define_train_flags(task)` takes its `train_defaults`. `task` is a task name or alias.
The runner (`python -m pipelines <verb> <task>`) calls these; nothing runs on import.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import MISSING

from absl import flags

from gpt2_tf.core import run_folder
from gpt2_tf.core.run_folder import FINAL

FLAGS = flags.FLAGS
_TRAIN_TASK = None  # the task of the train.py that defined the training flags


# What a user can cause and fix (bad input, a busy folder, a missing file, no network): said
# in one message, not a traceback. Anything else keeps its traceback.
USER_ERRORS = (ValueError, TypeError, KeyError, OSError, RuntimeError, FloatingPointError)


def run(main) -> None:
    """`absl.app.run(main)` for a pipeline script: a user error prints its message alone on
    stderr and exits with status 1; `--traceback` shows the traceback as well."""
    import sys

    from absl import app

    flags.DEFINE_boolean("traceback", False, "On an error, show Python's traceback too.")

    def reporting(argv):
        try:
            return main(argv)
        except USER_ERRORS as e:
            if FLAGS.traceback:
                raise
            message = e.args[0] if isinstance(e, KeyError) and e.args else e
            print(f"error: {message}\n(--traceback shows where it was raised)", file=sys.stderr)
            sys.exit(1)

    app.run(reporting)


def _spec(task):
    """A task's TaskSpec from its name or alias (a TaskSpec is returned as it is)."""
    from gpt2_tf.data.tasks import TaskSpec, get_task

    return task if isinstance(task, TaskSpec) else get_task(task)


def _define(flag) -> None:
    """An absl flag from a `tasks.Flag` record."""
    if flag.kind == "enum":
        flags.DEFINE_enum(flag.name, flag.default, list(flag.choices), flag.help)
    else:
        getattr(flags, f"DEFINE_{flag.kind}")(flag.name, flag.default, flag.help)
    if flag.required:
        flags.mark_flag_as_required(flag.name)


def define_prep_flags(task) -> None:
    """The common prep flags and the task's own (`TaskSpec.prep_flags`); --input also names the
    task's input flag (make prep-<alias> INPUT=... passes it whatever the task calls it)."""
    spec = _spec(task)
    for flag in spec.prep_flags:
        _define(flag)
    names = {f.name for f in spec.prep_flags}
    if spec.input_flag and "input" not in names:
        flags.DEFINE_alias("input", spec.input_flag)
    flags.DEFINE_string(
        "tokenizer",
        None,
        "Tokenizer folder or hub id (default: $GPT2_TF_TOKENIZER, else GPT-2's vocabulary "
        "shipped with gpt2_tf).",
    )
    flags.DEFINE_string("output_dir", os.path.join("tfrecords", spec.name), "Output folder.")
    flags.DEFINE_integer("seq_len", spec.seq_len, "Tokens per example (padded to this length).")
    flags.DEFINE_integer("seed", 0, "Seed of the split (and of --subsample).")
    flags.DEFINE_integer("num_shards", 1, "TFRecord shards per split.")
    flags.DEFINE_enum(
        "on_error",
        "raise",
        ["raise", "skip"],
        "Bad rows: stop with an error naming file, line and field, or skip and count.",
    )
    flags.DEFINE_boolean("overwrite", False, "Replace prepared data already in --output_dir.")


def prep_options(task_options: dict, **extra):
    from gpt2_tf.data.prep import PrepOptions

    return PrepOptions(
        output_dir=FLAGS.output_dir,
        seq_len=FLAGS.seq_len,
        seed=FLAGS.seed,
        num_shards=FLAGS.num_shards,
        on_error=FLAGS.on_error,
        overwrite=FLAGS.overwrite,
        task=task_options,
        **extra,
    )


def run_prep(task, task_options: dict | None = None, **extra) -> dict:
    """Runs a task's prep (a name, alias or TaskSpec) with the common flags; returns its
    metadata. The task options and PrepOptions extras default to its `prep_flags`' values."""
    from gpt2_tf.data.prep import prepare
    from gpt2_tf.tokenizer.bpe import GPT2Tokenizer

    spec = _spec(task)
    if task_options is None:
        task_options = {f.name: FLAGS[f.name].value for f in spec.prep_flags if not f.prep_option}
        extra = {
            **{f.name: FLAGS[f.name].value for f in spec.prep_flags if f.prep_option},
            **extra,
        }
    if spec.configure is not None:
        spec = spec.configure(spec, task_options)
    tokenizer = GPT2Tokenizer.from_pretrained(FLAGS.tokenizer)
    return prepare(spec, tokenizer, prep_options(task_options, **extra))


def define_train_flags(task, **defaults) -> None:
    """Every TrainConfig field as a flag, with the task's `train_defaults` (e.g. LoRA for RTE)
    and then `defaults` over TrainConfig's."""
    from gpt2_tf.core.hardware import JIT_CHOICES
    from gpt2_tf.train.distribute import STRATEGIES
    from gpt2_tf.train.optim import SCHEDULES
    from gpt2_tf.train.trainer import PRECISIONS, TrainConfig

    global _TRAIN_TASK
    spec = _spec(task)
    task = spec.name
    _TRAIN_TASK = task  # run_train checks that --data_dir holds this task's data
    d = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not MISSING}
    unknown = set(spec.train_defaults) - set(d)
    if unknown:
        raise ValueError(f"task {task}: train_defaults names no training flag: {sorted(unknown)}")
    d.update(spec.train_defaults)
    d.update(defaults)
    flags.DEFINE_string("data_dir", os.path.join("tfrecords", task), "Prepared TFRecords.")
    flags.DEFINE_string("output_dir", os.path.join("runs", task), "Checkpoints, models, logs.")
    flags.DEFINE_string(
        "init_from",
        d["init_from"],
        "A preset for random weights (tiny, 124M, "
        "355M, 774M, 1558M), a pretrained folder, or a hub id (gpt2, ...).",
    )
    flags.DEFINE_integer(
        "batch_size",
        d["batch_size"],
        "Global batch per optimizer step: packed rows of seq_len for LM tasks with --packing "
        "(each holding as many whole examples as fit), else examples.",
    )
    flags.DEFINE_boolean(
        "packing",
        d["packing"],
        "LM tasks: pack several whole examples into each row of seq_len (attention and positions "
        "per example, the same loss as padded rows), each epoch anew from a seeded permutation. "
        "Classifier tasks: batches cropped to length buckets (every multiple of 8 up to seq_len), "
        "the same loss as padded. --nopacking: one padded example per row of seq_len.",
    )
    flags.DEFINE_integer("epochs", d["epochs"], "Passes over the training split.")
    flags.DEFINE_integer("max_steps", d["max_steps"], "Optimizer steps; > 0 overrides --epochs.")
    flags.DEFINE_float("learning_rate", d["learning_rate"], "Peak learning rate (AdamW).")
    flags.DEFINE_integer("warmup_steps", d["warmup_steps"], "Linear warm-up steps.")
    flags.DEFINE_enum("schedule", d["schedule"], list(SCHEDULES), "Decay after warm-up.")
    flags.DEFINE_float(
        "weight_decay", d["weight_decay"], "AdamW decay (not on biases, LayerNorm, embeddings)."
    )
    flags.DEFINE_float("clipnorm", d["clipnorm"], "Clip the global gradient norm; 0 = off.")
    flags.DEFINE_integer("grad_accum_steps", d["grad_accum_steps"], "Micro-batches per step.")
    flags.DEFINE_float("dropout", d["dropout"], "Dropout rate; unset keeps the model's.")
    flags.DEFINE_integer("lora_rank", d["lora_rank"], "LoRA rank; 0 = full fine-tuning.")
    flags.DEFINE_float("lora_alpha", d["lora_alpha"], "LoRA alpha (default: the rank).")
    flags.DEFINE_list(
        "lora_targets",
        list(d["lora_targets"]),
        "LoRA targets among c_attn, attn.c_proj, c_fc, mlp.c_proj.",
    )
    flags.DEFINE_enum("pooling", d["pooling"], ["last", "mean"], "Classifier pooling.")
    flags.DEFINE_enum(
        "precision",
        d["precision"],
        list(PRECISIONS),
        "Keras dtype policy; auto: mixed_bfloat16 where the device has bfloat16 natively (GPUs of "
        "compute capability 8.0+, TPUs, CPUs with AMX or AVX512-BF16 under oneDNN), else float32.",
    )
    flags.DEFINE_enum(
        "jit_compile",
        d["jit_compile"],
        list(JIT_CHOICES),
        "The training step as one XLA program (true) or a TensorFlow graph (false); auto: XLA on "
        "GPUs, TPUs and CPUs where TensorFlow runs without oneDNN, the graph where it runs oneDNN.",
    )
    flags.DEFINE_enum("strategy", d["strategy"], list(STRATEGIES), "tf.distribute strategy.")
    flags.DEFINE_integer(
        "inter_op_threads", d["inter_op_threads"], "TF inter-op threads; 0 = auto (1 on CPU)."
    )
    flags.DEFINE_integer("eval_every", d["eval_every"], "Steps between evaluations; 0 = per epoch.")
    flags.DEFINE_integer("eval_batches", d["eval_batches"], "Validation batches; 0 = all.")
    flags.DEFINE_integer("save_every", d["save_every"], "Steps between resumable checkpoints.")
    flags.DEFINE_integer(
        "early_stopping_patience",
        d["early_stopping_patience"],
        "Stop after this many evaluations without improvement; 0 = off.",
    )
    flags.DEFINE_integer("log_every", d["log_every"], "Steps between log lines.")
    flags.DEFINE_integer("seed", d["seed"], "Random seed (data order, dropout, init).")
    flags.DEFINE_integer("stage", d["stage"], "Staged text data: train on this stage; 0 = all.")
    flags.DEFINE_string("tokenizer", d["tokenizer"], "Tokenizer folder (default: the data's).")
    flags.DEFINE_integer("num_samples", d["num_samples"], "Generations shown per evaluation (LM).")
    flags.DEFINE_boolean(
        "restart",
        d["restart"],
        "Start at step 0: remove --output_dir's checkpoints and logs first. Without it, a rerun "
        "resumes from the last checkpoint, and is refused if its run-defining flags changed.",
    )


def run_train() -> dict:
    from gpt2_tf.core.hardware import resolve_precision
    from gpt2_tf.train.trainer import TrainConfig, Trainer

    # flags.txt records what runs: `--precision=auto` as the precision it chose.
    FLAGS.precision, _ = resolve_precision(FLAGS.precision, FLAGS.strategy)
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "task"]
    cfg = TrainConfig(**{n: getattr(FLAGS, n) for n in names}, task=_TRAIN_TASK)
    FLAGS.restart = False  # in flags.txt: a rerun from it resumes this run
    # The trainer takes the folder (the chief alone, under multi-worker training), refuses to
    # resume a run started with other settings, then writes flags.txt.
    return Trainer(cfg, flags_text=FLAGS.flags_into_string()).run()


def define_test_flags(task) -> None:
    from gpt2_tf.model.generation import SAMPLERS

    task = _spec(task).name
    flags.DEFINE_string("model_dir", os.path.join("runs", task, FINAL), "A trained model folder.")
    flags.DEFINE_multi_string("prompt", [], "An input text (repeat the flag for more).")
    flags.DEFINE_string(
        "input_file",
        None,
        "Inputs: JSONL (fields per line, e.g. instruction, "
        "context, premise, hypothesis, word) or one text a line.",
    )
    flags.DEFINE_string("output_file", None, "Also write the results here as JSONL.")
    flags.DEFINE_integer("max_new_tokens", 64, "Tokens generated per input (LM tasks).")
    flags.DEFINE_enum("sampler", "greedy", list(SAMPLERS), "Sampling method (LM tasks).")
    flags.DEFINE_float("temperature", 0.8, "Sampling temperature.")
    flags.DEFINE_integer("top_k", 50, "top_k sampler: keep this many tokens.")
    flags.DEFINE_float("top_p", 0.9, "top_p sampler: nucleus mass.")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")


def run_test() -> list[dict]:
    import json

    from gpt2_tf.serve.inference import load_trained, predict, read_inputs
    from gpt2_tf.train.distribute import configure_cpu_threads

    configure_cpu_threads("one_device")  # before TensorFlow starts: see distribute.py
    model, tokenizer, task = load_trained(FLAGS.model_dir)
    generation = {
        k: getattr(FLAGS, k)
        for k in ("max_new_tokens", "sampler", "temperature", "top_k", "top_p", "seed")
    }
    inputs = read_inputs(FLAGS.prompt, FLAGS.input_file)
    results = predict(
        model, tokenizer, task, inputs, **(generation if task["kind"] != "classifier" else {})
    )
    lines = [
        json.dumps({"input": i.fields, **r}, ensure_ascii=False) for i, r in zip(inputs, results)
    ]
    print("\n".join(lines))
    if FLAGS.output_file:
        with open(FLAGS.output_file, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return results


def define_export_flags(task) -> None:
    task = _spec(task).name
    flags.DEFINE_string("model_dir", os.path.join("runs", task, FINAL), "A trained model folder.")
    flags.DEFINE_string(
        "export_dir", os.path.join("exports", task), "Versions go in <export_dir>/N."
    )
    flags.DEFINE_integer("version", None, "Version number (default: the next free one).")


def run_export() -> str:
    from gpt2_tf.serve.export import export_saved_model
    from gpt2_tf.serve.inference import load_trained

    model, tokenizer, task = load_trained(FLAGS.model_dir)
    path = export_saved_model(model, tokenizer, FLAGS.export_dir, task, FLAGS.version)
    print(f"exported {FLAGS.model_dir} -> {path}  (serving_default; see README: Serving)")
    return path


# ---- make eval-<task> and make staged-text ---------------------------------------------------
def define_eval_flags(task, names=None) -> None:
    """EvalConfig fields as flags (all, or those in `names`); --model_dir: runs/<task>/final."""
    from gpt2_tf.analyses import evaluate

    task = _spec(task).name
    define = {"int": flags.DEFINE_integer, "float": flags.DEFINE_float}
    define["bool"] = flags.DEFINE_boolean
    for f in dataclasses.fields(evaluate.EvalConfig):
        if names is None or f.name in names:
            default = os.path.join("runs", task, FINAL) if f.name == "model_dir" else f.default
            define.get(f.type, flags.DEFINE_string)(f.name, default, evaluate.HELP[f.name])


def run_eval() -> dict:
    from gpt2_tf.analyses import evaluate
    from gpt2_tf.core.reports import jsonable

    names = [f.name for f in dataclasses.fields(evaluate.EvalConfig)]
    cfg = evaluate.EvalConfig(**{n: getattr(FLAGS, n) for n in names})
    results = evaluate.run(cfg)
    out_dir = cfg.output_dir or os.path.join(
        os.path.dirname(os.path.abspath(cfg.model_dir)), run_folder.EVAL
    )
    summary = {k: evaluate.scalars(v) for k, v in results["models"].items()}
    print(json.dumps(jsonable(summary), indent=2))
    report = os.path.join(out_dir, run_folder.REPORT)
    print(f"wrote {report} (and metrics, plots) for {cfg.model_dir}")
    return results


STAGED_GENERATION_FLAGS = (
    "num_generations",
    "max_new_tokens",
    "sampler",
    "temperature",
    "top_k",
    "top_p",
    "embedder",
    "unit",
    "num_shown",
)


def define_staged_flags(task) -> None:
    """The task's training flags (its `train_defaults`; less --stage, which this sets) and the
    generation flags; --output_dir: runs/<task>_staged. For data prepared with --num_stages."""
    task = _spec(task).name
    define_train_flags(task)
    delattr(FLAGS, "stage")
    FLAGS.set_default("output_dir", os.path.join("runs", f"{task}_staged"))
    define_eval_flags(task, STAGED_GENERATION_FLAGS)


def run_staged() -> dict:
    from gpt2_tf.analyses import staged
    from gpt2_tf.analyses.evaluate import EvalConfig
    from gpt2_tf.train.trainer import TrainConfig

    f = FLAGS
    train = {x.name: getattr(f, x.name) for x in dataclasses.fields(TrainConfig) if x.name in f}
    generation = {name: getattr(f, name) for name in STAGED_GENERATION_FLAGS}
    evaluation = EvalConfig(
        model_dir="", batch_size=f.batch_size, seed=f.seed, packing=f.packing, **generation
    )
    results = staged.run_staged(staged.StagedConfig(TrainConfig(**train), evaluation))
    for row in results["stages"]:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
    print(f"wrote {os.path.join(f.output_dir, run_folder.EVAL, run_folder.REPORT)}")
    return results
