"""Training from prepared TFRecords: one loop for every task, under any `tf.distribute` strategy.

Why a custom loop rather than `fit`: (1) the LM loss must be the mean over the target tokens of
the whole global batch, across replicas and accumulation steps, which needs the global token
count before dividing; (2) gradients are clipped and their norm logged after the all-reduce, as
in PyTorch DDP; (3) a run killed mid-epoch resumes to the same weights, so the data position and
the dropout RNG are checkpointed with the model and optimizer.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil

import tensorflow as tf
from absl import logging

from gpt2_tf.core import run_folder
from gpt2_tf.core.compat import seeded
from gpt2_tf.core.hardware import JIT_CHOICES, resolve_jit_compile, resolve_precision
from gpt2_tf.core.locking import FolderLock
from gpt2_tf.core.reports import write_json
from gpt2_tf.data.buckets import STEP, BucketSplit, compiled_width
from gpt2_tf.data.packing import PackedSplit
from gpt2_tf.data.records import (
    CLASSIFIER,
    explain_data_loss,
    load_tfrecords,
    read_metadata,
    split_examples,
    split_prompts,
)
from gpt2_tf.evaluation import loop, metrics
from gpt2_tf.model.config import PRESETS, GPT2Config
from gpt2_tf.model.gpt2 import GPT2Classifier, GPT2LanguageModel
from gpt2_tf.model.lora import enable_lora, save_lora
from gpt2_tf.train.distribute import configure_cpu_threads, get_strategy
from gpt2_tf.train.monitor import Monitor
from gpt2_tf.train.optim import make_optimizer
from gpt2_tf.train.step import TrainStep

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")  # auto: see hardware.py


@dataclasses.dataclass
class TrainConfig:
    data_dir: str
    output_dir: str
    init_from: str = "tiny"  # a preset (random weights), a pretrained folder or a hub id
    # global, over all replicas and micro-steps: packed rows per optimizer step (LM tasks with
    # `packing`), else examples per step
    batch_size: int = 8
    epochs: int = 1
    max_steps: int = 0  # > 0 overrides epochs
    learning_rate: float = 5e-4
    warmup_steps: int = 0
    schedule: str = "linear"
    weight_decay: float = 0.01
    clipnorm: float = 1.0  # 0 disables clipping
    grad_accum_steps: int = 1
    dropout: float | None = None  # None keeps the checkpoint's / preset's rate
    lora_rank: int = 0  # 0 = full fine-tuning
    lora_alpha: float | None = None
    lora_targets: tuple[str, ...] = ("c_attn",)
    pooling: str = "last"  # classifier tasks
    precision: str = "auto"  # bfloat16 where the device has it natively, else float32
    # the training step as one XLA program or as a graph (`train/step.py`); auto: what this
    # device ran faster (`hardware.resolve_jit_compile`)
    jit_compile: str = "auto"
    strategy: str = "auto"
    inter_op_threads: int = 0  # 0 = auto: 1 for a single replica on CPU (see distribute.py)
    eval_every: int = 0  # steps; 0 = at the end of each epoch
    eval_batches: int = 0  # 0 = the whole validation split
    save_every: int = 100  # steps between resumable checkpoints
    early_stopping_patience: int = 0  # evaluations without improvement; 0 = off
    log_every: int = 10
    seed: int = 0
    stage: int = 0  # text_tuning staged data: train on this stage only (0 = all of train)
    tokenizer: str | None = None  # for the sampled generations in TensorBoard (LM tasks)
    num_samples: int = 3
    restart: bool = False  # clear output_dir's checkpoints and logs and start at step 0
    task: str | None = None  # the task the data must be (a pipeline's own); None: any
    # LM tasks: several whole examples per row of seq_len (`gpt2_tf.data.packing`); classifier
    # tasks: batches cropped to a few length buckets (`gpt2_tf.data.buckets`)
    packing: bool = True

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.jit_compile not in JIT_CHOICES:
            raise ValueError(f"jit_compile must be one of {JIT_CHOICES}, got {self.jit_compile!r}")
        for name in ("batch_size", "grad_accum_steps", "epochs", "log_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(
                f"batch_size {self.batch_size} is not divisible by grad_accum_steps "
                f"{self.grad_accum_steps}"
            )
        self.lora_targets = tuple(self.lora_targets)


class NonFiniteLoss(FloatingPointError):
    pass


def build_model(cfg: TrainConfig, meta: dict, dtype=None):
    """The task's model from a preset or pretrained weights, with dropout and LoRA applied;
    `dtype` is its Keras dtype policy (None: Keras's global one)."""
    overrides = {} if cfg.dropout is None else {"dropout": cfg.dropout}
    kwargs = {"dtype": dtype} if dtype else {}
    if meta["kind"] == CLASSIFIER:
        kwargs.update(num_classes=len(meta["label_names"]), pooling=cfg.pooling)
    cls = GPT2Classifier if meta["kind"] == CLASSIFIER else GPT2LanguageModel
    if cfg.init_from in PRESETS:  # random weights: widen the position table to fit the data
        config = GPT2Config.from_preset(cfg.init_from, **overrides)
        config = config.replace(n_positions=max(config.n_positions, meta["seq_len"]))
        model = cls(config, **kwargs)
    else:
        model = cls.from_pretrained(cfg.init_from, **kwargs)
        if overrides:  # rebuild with the new rate, same weights
            fresh = cls(model.config.replace(**overrides), **kwargs)
            fresh.set_weights(model.get_weights())
            model = fresh
    if model.config.n_positions < meta["seq_len"]:
        raise ValueError(
            f"{cfg.data_dir}: seq_len {meta['seq_len']} exceeds the model's "
            f"n_positions {model.config.n_positions}"
        )
    if cfg.lora_rank:
        enable_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    return model


class Trainer:
    def __init__(self, cfg: TrainConfig, flags_text: str | None = None):
        """`flags_text`: the command's flags, written to flags.txt once the folder is taken."""
        self.meta = read_metadata(cfg.data_dir)
        if cfg.task and self.meta["task"] != cfg.task:
            raise ValueError(
                f"{cfg.data_dir} holds {self.meta['task']} data, not {cfg.task}: pass the "
                f"--data_dir of a {cfg.task} prep"
            )
        self.is_lm = self.meta["kind"] != CLASSIFIER
        configure_cpu_threads(cfg.strategy, cfg.inter_op_threads)
        # `auto` resolved here, so train_config.json records the precision that ran.
        precision, _ = resolve_precision(cfg.precision, cfg.strategy)
        # data_dir absolute: train_config.json then names the data from any directory.
        data_dir = os.path.abspath(cfg.data_dir)
        self.cfg = cfg = dataclasses.replace(cfg, precision=precision, data_dir=data_dir)
        self.strategy = get_strategy(cfg.strategy)
        self.replicas = self.strategy.num_replicas_in_sync
        jit, _ = resolve_jit_compile(cfg.jit_compile, cfg.strategy, precision, self.replicas)
        self.cfg = cfg = dataclasses.replace(cfg, jit_compile=str(jit).lower())
        self.micro_batch = cfg.batch_size // cfg.grad_accum_steps
        if self.micro_batch % self.replicas:
            raise ValueError(
                f"micro-batch {self.micro_batch} (batch_size / grad_accum_steps) is "
                f"not divisible by the {self.replicas} replicas"
            )
        # Packed epochs differ in their number of rows, so in their number of steps; bucketed
        # epochs (classifiers) in their number of full batches.
        self.packing = bool(cfg.packing and self.is_lm)
        self.bucketing = bool(cfg.packing and not self.is_lm)
        self._plans: dict[int, list] = {}
        self._packed: dict[str, PackedSplit] = {}
        self._buckets: dict[str, BucketSplit] = {}
        if self.packing:
            self._packed["train"] = PackedSplit(cfg.data_dir, "train", stage=cfg.stage or None)
        if self.bucketing:
            self._buckets["train"] = BucketSplit(cfg.data_dir, "train", stage=cfg.stage or None)
        self.steps_per_epoch = self.epoch_steps(0)
        if self.steps_per_epoch < 1:
            what = "rows once packed" if self.packing else "examples"
            raise ValueError(
                f"{cfg.data_dir}: fewer training {what} than one batch of {cfg.batch_size}"
            )
        self.total_steps = cfg.max_steps or sum(self.epoch_steps(e) for e in range(cfg.epochs))
        self.chief = _is_chief(self.strategy)
        ckpt_dir = os.path.join(cfg.output_dir, run_folder.CHECKPOINTS)
        self._lock = None
        if self.chief:  # one run per folder: a second fails at once, naming this one
            self._lock = FolderLock(cfg.output_dir, "training", inside=True).acquire()
        else:  # every worker saves; only the chief's copy is kept
            ckpt_dir = os.path.join(
                cfg.output_dir, f"tmp-worker-{self.strategy.cluster_resolver.task_id}"
            )
        try:
            if self.chief:
                self._take_folder(ckpt_dir)
                if flags_text is not None:  # this command's flags: --flagfile= reruns it
                    with open(os.path.join(cfg.output_dir, run_folder.FLAGS_FILE), "w") as f:
                        f.write(flags_text)
            elif cfg.restart:  # a worker's own checkpoints
                shutil.rmtree(ckpt_dir, ignore_errors=True)
            self._build(ckpt_dir)
        except BaseException:
            self.close()
            raise

    def _build(self, ckpt_dir: str) -> None:
        """The model, optimizer, counters, logs and checkpoints, in the strategy's scope. The
        model's weights (and its dropout seeds) are drawn with Keras seeded by `cfg.seed`, as
        `analyses.evaluate.base_model` draws them again; the process's random state is left as
        it was, for what the process builds afterwards."""
        cfg = self.cfg
        with self.strategy.scope(), seeded(cfg.seed):
            # The policy goes to the model alone: Keras's global one is left as it was.
            self.model = build_model(cfg, self.meta, dtype=cfg.precision)
            self.optimizer = make_optimizer(
                cfg.learning_rate,
                cfg.warmup_steps,
                self.total_steps,
                cfg.schedule,
                cfg.weight_decay,
                cfg.precision,
            )
            self.optimizer.build(self.model.trainable_variables)
            self.state = {
                k: tf.Variable(v, dtype=tf.float64, trainable=False)
                for k, v in (
                    ("step", 0),
                    ("best", math.inf),
                    ("bad_evals", 0),
                    ("tokens", 0),
                    ("skipped_steps", 0),  # float16 updates skipped for non-finite gradients
                )
            }
        self.monitor = Monitor(cfg.output_dir, csv_columns(self.is_lm), enabled=self.chief)
        self._window = [0.0, 0.0]  # (real tokens, positions) since the last log line
        self.checkpoint = tf.train.Checkpoint(
            model={f"v{i}": v for i, v in enumerate(self.model.variables)},
            optimizer={f"v{i}": v for i, v in enumerate(self.optimizer.variables)},
            state=self.state,
        )
        self.manager = tf.train.CheckpointManager(self.checkpoint, ckpt_dir, max_to_keep=2)
        self.step = TrainStep(
            self.model,
            self.optimizer,
            self.strategy,
            is_lm=self.is_lm,
            grad_accum_steps=cfg.grad_accum_steps,
            clipnorm=cfg.clipnorm,
            jit_compile=cfg.jit_compile == "true",
        )

    def _take_folder(self, ckpt_dir: str) -> None:
        """Before anything is written: `--restart` clears the run's outputs; a resume must have
        the settings the run was started with; a start with no checkpoint clears the logs a
        killed attempt left (else its rows would stay beside the new ones)."""
        folder = self.cfg.output_dir
        if self.cfg.restart:
            removed = run_folder.clear(folder)
            if removed:
                logging.info("--restart: removed %s from %s", ", ".join(removed), folder)
        elif run_folder.checkpoint_step(ckpt_dir) is not None:
            run_folder.check_resumable(folder, dataclasses.asdict(self.cfg), ckpt_dir)
        elif run_folder.has_logs(folder):
            logging.warning(
                "%s: no checkpoint: starting from step 0 (logs of an earlier attempt removed)",
                folder,
            )
            run_folder.clear(folder, run_folder.LOGS)  # results (final/, best/) stay

    def close(self) -> None:
        """Releases the output folder (`run` does when it ends)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _state(self, name: str) -> float:
        return float(self.state[name].numpy())  # .numpy(): also a MirroredVariable's value

    # ---- data -----------------------------------------------------------------------------
    def _plan(self, epoch: int) -> list:
        """Epoch `epoch`'s plan, from `seed` and the epoch: packed training rows (example
        indices), or bucketed batches of `batch_size` (`(length, example indices)`, one a step)."""
        if epoch not in self._plans:
            if self.bucketing:
                plan = self._buckets["train"].plan(self.cfg.batch_size, self.cfg.seed, epoch)
            else:
                plan = self._packed["train"].plan(self.cfg.seed, epoch)
            self._plans[epoch] = plan
        return self._plans[epoch]

    def epoch_steps(self, epoch: int) -> int:
        """Optimizer steps in epoch `epoch` (a last partial batch is dropped)."""
        if self.packing:
            return len(self._plan(epoch)) // self.cfg.batch_size
        if self.bucketing:
            return len(self._plan(epoch))
        return split_examples(self.meta, "train", self.cfg.stage) // self.cfg.batch_size

    def locate(self, step: int) -> tuple[int, int]:
        """(epoch, steps already taken in it) of the run's `step`-th step (0-based)."""
        if not (self.packing or self.bucketing):
            return divmod(step, self.steps_per_epoch)
        epoch = 0
        while step >= self.epoch_steps(epoch):
            step -= self.epoch_steps(epoch)
            epoch += 1
        return epoch, step

    def _epoch_dataset(self, epoch: int, skip_steps: int):
        """Epoch `epoch`'s micro-batches in a fixed seeded order, after `skip_steps` steps.
        Packed: the rows of the epoch's plan (`_plan`: the permutation of `(seed, epoch)`, packed
        first fit). Bucketed (classifiers): the plan's batches, each cut into `grad_accum_steps`
        micro-batches of its length (`gpt2_tf.data.buckets`). Padded: the shuffle's seed pairs
        `seed + epoch` with TensorFlow's global seed, so that is `seed` too while the dataset is
        made (and what it was afterwards)."""
        if self.packing:  # the epoch's packed rows (`gpt2_tf.data.packing`)
            packed = self._packed["train"]
            ds = tf.data.Dataset.from_tensor_slices(packed.rows(self._plan(epoch)))
            ds = ds.batch(self.micro_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
        elif self.bucketing:
            buckets = self._buckets["train"]
            width = compiled_width(buckets.seq_len) if self.cfg.jit_compile == "true" else STEP
            ds = buckets.dataset(self._plan(epoch), self.cfg.grad_accum_steps, width)
        else:
            with seeded(self.cfg.seed):
                ds = load_tfrecords(
                    self.cfg.data_dir,
                    "train",
                    self.micro_batch,
                    shuffle=True,
                    seed=self.cfg.seed + epoch,
                    drop_remainder=True,
                    stage=self.cfg.stage or None,
                )
        ds = ds.take(self.epoch_steps(epoch) * self.cfg.grad_accum_steps)
        ds = ds.skip(skip_steps * self.cfg.grad_accum_steps)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        return self.strategy.experimental_distribute_dataset(ds.with_options(options))

    # ---- evaluation -----------------------------------------------------------------------
    def evaluate(self, split: str = "validation") -> dict:
        """Metrics over a split (on every worker, undistributed: models are identical). With
        `packing`, over the split's packed rows in its own order (the same sums as padded);
        `eval_batches` then counts batches of packed rows. Classifiers with `packing`: over the
        split's length buckets (every example once; the batches in a seeded order)."""
        if self.packing:
            if split not in self._packed:
                self._packed[split] = PackedSplit(self.cfg.data_dir, split)
            ds = self._packed[split].dataset(self.micro_batch, shuffle=False)
        elif self.bucketing:
            if split not in self._buckets:
                self._buckets[split] = BucketSplit(self.cfg.data_dir, split)
            buckets = self._buckets[split]
            plan = buckets.plan(self.micro_batch, shuffle=False, drop_remainder=False)
            ds = buckets.dataset(plan)
        else:
            ds = load_tfrecords(self.cfg.data_dir, split, self.micro_batch)
        sums = loop.run(self.model, ds, self.cfg.eval_batches)
        if self.is_lm:
            out = sums.lm_metrics()
            del out["target_tokens"]
            return out
        return sums.classifier_metrics(len(self.meta["label_names"]))

    def _evaluate_and_track(self, step: int) -> bool:
        """Evaluates, keeps `best/`, and says whether early stopping ends the run."""
        result = self.evaluate()
        self.monitor.scalars("validation", step, result)
        self.monitor.log(step, self.total_steps, {f"val_{k}": v for k, v in result.items()})
        score = result["loss"] if self.is_lm else -result["accuracy"]  # lower is better
        if score < self._state("best"):
            self.state["best"].assign(score)
            self.state["bad_evals"].assign(0)
            self._save_model(run_folder.BEST)
        else:
            self.state["bad_evals"].assign_add(1)
        if self.is_lm:
            self.monitor.text("validation", step, "samples", self._samples())
        self._last_eval = result
        patience = self.cfg.early_stopping_patience
        return bool(patience) and int(self._state("bad_evals")) >= patience

    def _samples(self) -> list[str]:
        """A few continuations of validation prompts, greedy, for TensorBoard."""
        if not self.cfg.num_samples or not self.chief:
            return []
        from gpt2_tf.model.generation import generate, prompt_room

        room = prompt_room(self.model, 32)
        prompts = [
            p[-room:] for p in split_prompts(self.cfg.data_dir, "validation", self.cfg.num_samples)
        ]
        outs = generate(self.model, prompts, max_new_tokens=32)
        tok = self.tokenizer
        return [f"{tok.decode(p)!r} → {tok.decode(o)!r}" for p, o in zip(prompts, outs)]

    # ---- the run --------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if not hasattr(self, "_tokenizer"):
            from gpt2_tf.tokenizer.bpe import GPT2Tokenizer

            self._tokenizer = GPT2Tokenizer.from_pretrained(
                self.cfg.tokenizer or self.meta["tokenizer"]["source"]
            )
        return self._tokenizer

    def _save_model(self, name: str) -> None:
        """A from_pretrained folder (LoRA folded in), its tokenizer and `task.json`, which the
        test and export pipelines read."""
        if self.chief:
            folder = os.path.join(self.cfg.output_dir, name)
            self.model.save_pretrained(folder)
            self.tokenizer.save_pretrained(folder)
            keys = ("task", "kind", "seq_len", "template", "label_names", "eos_id")
            task = {k: self.meta[k] for k in keys if k in self.meta}
            write_json(os.path.join(folder, run_folder.TASK_FILE), task)

    def _resume(self) -> int:
        try:
            path = self.manager.restore_or_initialize()
        except (ValueError, tf.errors.InvalidArgumentError) as e:  # "incompatible tensor ..."
            first = str(e).strip().splitlines()[0][:300]
            raise ValueError(
                f"{self.manager.directory}: its checkpoint does not fit this model ({first}); "
                "it belongs to another run: pass --restart or choose another --output_dir"
            ) from e
        step = int(self._state("step"))
        if path:
            logging.info("resumed from %s at step %d", path, step)
            self.monitor.cut(step)  # what a killed attempt logged after its checkpoint
        else:
            self.monitor.flags(dataclasses.asdict(self.cfg))
            if self.chief:
                write_json(
                    os.path.join(self.cfg.output_dir, run_folder.TRAIN_CONFIG),
                    dataclasses.asdict(self.cfg),
                )
        return step

    def _after_step(self, step: int, out: dict) -> dict:
        """Checks the loss, keeps the counters, and logs every `log_every` steps; returns the
        training values logged now (none between log steps)."""
        loss = float(out["loss"])
        if not math.isfinite(loss):
            raise NonFiniteLoss(
                f"step {step}: the training loss is {loss}; stopping (lower "
                "--learning_rate, set --clipnorm, or check the data)"
            )
        self.state["step"].assign(step)
        self.state["tokens"].assign_add(float(out["tokens"]))
        # Real tokens and computed positions since the last log line: the padding share.
        self._window[0] += float(out["tokens"])
        self._window[1] += float(out["positions"])
        if self.step.loss_scaled and float(out["skipped"]):
            self.state["skipped_steps"].assign_add(1)
            logging.warning(
                "step %d: non-finite gradients under mixed_float16; update skipped "
                "and the loss scale halved",
                step,
            )
        if step % self.cfg.log_every and step != self.total_steps:
            return {}
        values = {
            "loss": loss,
            "perplexity" if self.is_lm else "accuracy": (
                metrics.perplexity(loss, 1.0) if self.is_lm else float(out["accuracy"])
            ),
            "grad_norm": float(out["grad_norm"]),
            "learning_rate": float(out["learning_rate"]),
            "tokens_per_second": self.monitor.tokens_per_second(self._state("tokens")),
            "padding_share": 1.0 - self._window[0] / max(self._window[1], 1.0),
            "skipped_steps": int(self._state("skipped_steps")),
        }
        self._window = [0.0, 0.0]
        self.monitor.scalars("train", step, values)
        self.monitor.log(step, self.total_steps, values)
        self._last_train = values
        return values

    def _eval_due(self, step: int) -> bool:
        if step == self.total_steps:
            return True
        if self.cfg.eval_every:
            return step % self.cfg.eval_every == 0
        epoch, offset = self.locate(step - 1)  # at the end of each epoch
        return offset + 1 == self.epoch_steps(epoch)

    def run(self) -> dict:
        try:
            return self._run()
        except tf.errors.DataLossError as e:  # a damaged shard: say which, and what to do
            raise explain_data_loss(self.cfg.data_dir, e) from e
        finally:
            self.close()

    def _run(self) -> dict:
        step, stop = self._resume(), False
        self._last_train, self._last_eval = {}, {}
        while step < self.total_steps and not stop:
            epoch, offset = self.locate(step)
            iterator = iter(self._epoch_dataset(epoch, offset))
            for _ in range(offset, self.epoch_steps(epoch)):
                out = self.step(iterator)
                step += 1
                row = _prefixed(self._after_step(step, out), "train_")
                if self._eval_due(step):
                    stop = self._evaluate_and_track(step)
                    row.update(_prefixed(self._last_eval, "val_"))
                if row:  # one row per step that logged or evaluated; absent values left empty
                    self.monitor.csv_row({"step": step, "epoch": epoch, **row})
                if step % self.cfg.save_every == 0 or stop or step == self.total_steps:
                    self.manager.save(checkpoint_number=step)
                if stop or step >= self.total_steps:
                    break
        return self._finish(step, stop)

    def _finish(self, step: int, stopped_early: bool) -> dict:
        self._save_model(run_folder.FINAL)
        if self.cfg.lora_rank and self.chief:
            folder = os.path.join(self.cfg.output_dir, run_folder.LORA)
            os.makedirs(folder, exist_ok=True)
            save_lora(self.model, os.path.join(folder, run_folder.LORA_ADAPTERS))
        if not self.chief:
            shutil.rmtree(self.manager.directory, ignore_errors=True)
        result = {
            "steps": step,
            "stopped_early": stopped_early,
            "best": self._state("best"),
            "train": self._last_train,
            "validation": self._last_eval,
        }
        if self.chief:
            write_json(os.path.join(self.cfg.output_dir, run_folder.RESULT), result)
        return result


def csv_columns(is_lm: bool) -> list[str]:
    """metrics.csv's columns: one fixed set per kind of task, whatever a row holds."""
    train = ["loss", "perplexity" if is_lm else "accuracy", "grad_norm", "learning_rate"]
    train += ["tokens_per_second", "padding_share", "skipped_steps"]
    val = ["loss", "perplexity", "token_accuracy"] if is_lm else ["loss", "accuracy", "macro_f1"]
    return ["step", "epoch", *(f"train_{k}" for k in train), *(f"val_{k}" for k in val)]


def _prefixed(values: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in values.items()}


def _is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0
    )


def train(cfg: TrainConfig) -> dict:
    return Trainer(cfg).run()
