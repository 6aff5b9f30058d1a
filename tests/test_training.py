"""Training: it learns on real data, masks the prompt, trains only LoRA, distributes, logs,
resumes after SIGKILL to the same weights, and stops on a NaN loss."""

import dataclasses
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from gpt2_tf.data.records import load_tfrecords
from gpt2_tf.train.trainer import NonFiniteLoss, TrainConfig, Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config(data_dir, out, **kw):
    base = dict(
        data_dir=data_dir,
        output_dir=str(out),
        batch_size=8,
        max_steps=4,
        log_every=2,
        save_every=1000,
        num_samples=0,
        dropout=0.0,
        learning_rate=2e-3,
        strategy="one_device",
        precision="float32",  # exact comparisons on any CPU; --precision=auto has its own tests
    )
    return TrainConfig(**{**base, **kw})


def weights(model):
    return [np.asarray(v) for v in model.trainable_variables]


@pytest.mark.slow
def test_classifier_beats_majority_on_emotion(emotion_dir, tmp_path):
    cfg = config(
        emotion_dir,
        tmp_path,
        max_steps=150,
        batch_size=32,
        warmup_steps=20,
        eval_every=150,
        dropout=0.1,
    )
    result = Trainer(cfg).run()
    meta = json.load(open(os.path.join(emotion_dir, "metadata.json")))
    counts = meta["class_counts"]["validation"]
    majority = max(counts.values()) / sum(counts.values())
    assert result["validation"]["accuracy"] > majority + 0.1, (result, majority)
    assert os.path.exists(tmp_path / "best" / "model.safetensors")


def test_instruction_validation_loss_falls(dolly_dir, tmp_path):
    trainer = Trainer(config(dolly_dir, tmp_path, max_steps=30, eval_every=30, learning_rate=3e-3))
    before = trainer.evaluate()["loss"]
    result = trainer.run()
    assert result["validation"]["loss"] < before - 0.5, (before, result["validation"])
    rows = open(tmp_path / "metrics.csv").read().splitlines()
    assert rows[0].startswith("step,epoch,train_loss") and len(rows) == 1 + 15  # every 2nd step


def test_a_trainer_leaves_the_process_random_state_as_it_was(dolly_dir, tmp_path):
    """A Trainer seeds Keras for its own model alone: Python's, NumPy's and TensorFlow's random
    numbers afterwards, and a model built next, are what they would be without it; the same seed
    still gives the same initial weights."""
    from gpt2_tf.model.config import GPT2Config
    from gpt2_tf.model.gpt2 import GPT2LanguageModel

    def draws():
        model = GPT2LanguageModel(GPT2Config.from_preset("tiny"))
        return [random.random(), np.random.rand(), float(tf.random.uniform([]))], weights(model)

    keras.utils.set_random_seed(123)
    want_numbers, want_weights = draws()
    keras.utils.set_random_seed(123)
    trainers = []
    for name in ("a", "b"):
        trainers.append(Trainer(config(dolly_dir, tmp_path / name, seed=7, dropout=0.1)))
        trainers[-1].close()
        if name == "a":
            numbers, built = draws()
            assert numbers == want_numbers
            for a, b in zip(built, want_weights, strict=True):
                np.testing.assert_array_equal(a, b)
    first, second = (weights(t.model) for t in trainers)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_lora_trains_only_adapters(dolly_dir, tmp_path):
    trainer = Trainer(config(dolly_dir, tmp_path, lora_rank=4, lora_targets=("c_attn", "c_fc")))
    frozen = {v.path: np.asarray(v).copy() for v in trainer.model.variables if not v.trainable}
    adapters = {v.path: np.asarray(v).copy() for v in trainer.model.trainable_variables}
    assert all("lora_kernel" in p for p in adapters) and len(adapters) == 2 * 2 * 2
    trainer.run()
    after = {v.path: np.asarray(v) for v in trainer.model.variables}
    for path, value in frozen.items():
        if "seed_generator" not in path:
            np.testing.assert_array_equal(after[path], value, err_msg=path)
    assert any(np.abs(after[p] - v).max() > 0 for p, v in adapters.items() if "lora_kernel_b" in p)
    assert os.path.getsize(tmp_path / "lora" / "adapters.safetensors") < 200_000


def test_loss_ignores_prompt_targets(dolly_dir, tmp_path):
    trainer = Trainer(config(dolly_dir, tmp_path))
    x, y, w = next(iter(load_tfrecords(dolly_dir, "train", 4)))
    base = trainer.step.forward_sums(x, y, w, training=False)[0].numpy()
    y, w = y.numpy(), w.numpy()
    prompt_pos = np.argwhere((w == 0) & (x["padding_mask"].numpy() == 1))[0]
    target_pos = np.argwhere(w == 1)[0]
    for pos, changes in ((prompt_pos, False), (target_pos, True)):
        changed = y.copy()
        changed[tuple(pos)] = (changed[tuple(pos)] + 1) % 50257
        loss = trainer.step.forward_sums(x, tf.constant(changed), tf.constant(w), training=False)[0]
        assert (abs(float(loss) - float(base)) > 1e-4) == changes


def test_grad_accumulation_equals_one_big_batch(dolly_dir, tmp_path):
    one = Trainer(config(dolly_dir, tmp_path / "a", max_steps=3))
    one.run()
    accumulated = Trainer(config(dolly_dir, tmp_path / "b", max_steps=3, grad_accum_steps=2))
    accumulated.run()
    for a, b in zip(weights(one.model), weights(accumulated.model)):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_nan_loss_stops_and_names_the_step(dolly_dir, tmp_path):
    trainer = Trainer(
        config(
            dolly_dir,
            tmp_path,
            max_steps=20,
            learning_rate=1e9,
            clipnorm=0.0,
            warmup_steps=0,
            schedule="constant",
        )
    )
    with pytest.raises(NonFiniteLoss, match=r"step \d+: the training loss is (nan|inf)"):
        trainer.run()


def test_early_stopping(dolly_dir, tmp_path):
    cfg = config(
        dolly_dir,
        tmp_path,
        max_steps=12,
        eval_every=2,
        learning_rate=0.0,
        early_stopping_patience=2,
        schedule="constant",
    )
    result = Trainer(cfg).run()
    assert result["stopped_early"] and result["steps"] == 6  # best at 2, no gain at 4 and 6


def test_tensorboard_tags(dolly_dir, tmp_path):
    Trainer(config(dolly_dir, tmp_path, max_steps=4, eval_every=2, num_samples=2)).run()
    tags = {}
    for split in ("train", "validation"):
        folder = tmp_path / "tensorboard" / split
        for name in os.listdir(folder):
            for event in tf.compat.v1.train.summary_iterator(str(folder / name)):
                for value in event.summary.value:
                    tags.setdefault(split, set()).add(value.tag)
    assert {
        "loss",
        "perplexity",
        "learning_rate",
        "grad_norm",
        "tokens_per_second",
        "padding_share",
        "flags",
    } <= tags["train"]
    assert {"loss", "perplexity", "token_accuracy", "samples"} <= tags["validation"]
    for sub in ("checkpoints", "best", "final"):
        assert os.path.isdir(tmp_path / sub)
    assert (tmp_path / "train_config.json").exists() and (tmp_path / "result.json").exists()


def read_csv(path):
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_the_logs_report_the_padding_share(dolly_dir, tmp_path):
    """metrics.csv (and TensorBoard) give each log line's padding share, the computed positions
    that held no real token: on the real Dolly rows, packing leaves less of it than padding."""
    shares = {}
    for packing in (True, False):
        out = tmp_path / str(packing)
        Trainer(config(dolly_dir, out, max_steps=4, log_every=1, packing=packing)).run()
        rows = read_csv(out / "metrics.csv")
        logged = [dict(zip(rows[0], r))["train_padding_share"] for r in rows[1:]]
        shares[packing] = [float(v) for v in logged if v]
        assert len(shares[packing]) == 4 and all(0 <= v < 1 for v in shares[packing])
    assert np.mean(shares[True]) < np.mean(shares[False]), shares


def test_metrics_csv_has_one_set_of_columns_when_an_epoch_is_shorter_than_log_every(
    dolly_dir, tmp_path
):
    """320 examples / 64 = 5 steps an epoch (padded rows), a log line every 10: the first row
    (step 5) has only validation values, the next both. Every row has the header's columns, each
    value under its own name, and the training loss reads back from the CSV alone."""
    cfg = config(dolly_dir, tmp_path, batch_size=64, max_steps=10, log_every=10, packing=False)
    trainer = Trainer(cfg)
    result = trainer.run()
    header, *rows = read_csv(tmp_path / "metrics.csv")
    assert all(len(r) == len(header) for r in rows), (header, rows)
    by_step = {int(r[0]): dict(zip(header, r)) for r in rows}
    assert sorted(by_step) == [5, 10]
    assert by_step[5]["train_loss"] == "" and float(by_step[5]["val_loss"]) > 0
    last = by_step[10]
    assert float(last["val_loss"]) == pytest.approx(result["validation"]["loss"], rel=1e-6)
    assert float(last["val_perplexity"]) == pytest.approx(result["validation"]["perplexity"])
    assert float(last["train_loss"]) == pytest.approx(result["train"]["loss"], rel=1e-6)
    assert float(last["train_grad_norm"]) == pytest.approx(result["train"]["grad_norm"])
    from gpt2_tf.analyses.evaluate import read_training_loss

    shutil.rmtree(tmp_path / "tensorboard")  # the CSV is the fallback
    steps, loss = read_training_loss(str(tmp_path))
    assert steps == [10] and loss == [pytest.approx(result["train"]["loss"], rel=1e-6)]


def test_logged_learning_rate_is_the_one_the_update_used(dolly_dir, tmp_path):
    """Warm-up over 4 steps to 1e-3: update k (1-based) uses schedule(k - 1) = k * 2.5e-4."""
    trainer = Trainer(
        config(dolly_dir, tmp_path, max_steps=3, log_every=1, warmup_steps=4, learning_rate=1e-3)
    )
    trainer.run()
    header, *rows = read_csv(tmp_path / "metrics.csv")
    logged = {int(r[0]): float(dict(zip(header, r))["train_learning_rate"]) for r in rows}
    assert logged == {k: pytest.approx(k * 2.5e-4) for k in (1, 2, 3)}


def test_mixed_float16_applies_every_update_and_counts_skips(dolly_dir, tmp_path):
    """The loss scale is sized to the mean loss: 8 steps on real Dolly rows make 8 updates (the
    summed loss x 2^15 overflowed float16 and skipped most of them). A step that does overflow
    is counted, in metrics.csv and TensorBoard."""
    trainer = Trainer(
        config(dolly_dir, tmp_path / "a", max_steps=8, log_every=1, precision="mixed_float16")
    )
    trainer.run()
    assert int(trainer.optimizer.iterations) == 8
    header, *rows = read_csv(tmp_path / "a" / "metrics.csv")
    assert [dict(zip(header, r))["train_skipped_steps"] for r in rows] == ["0"] * 8

    trainer = Trainer(
        config(dolly_dir, tmp_path / "b", max_steps=2, log_every=1, precision="mixed_float16")
    )
    # Overflows float16 in the backward pass, and still does once halved: both steps skipped.
    trainer.optimizer.dynamic_scale.assign(2.0**120)
    trainer.run()
    assert int(trainer.optimizer.iterations) == 0
    assert float(trainer.optimizer.dynamic_scale) == 2.0**118
    header, *rows = read_csv(tmp_path / "b" / "metrics.csv")
    assert [dict(zip(header, r))["train_skipped_steps"] for r in rows] == ["1", "2"]
    skipped = {}
    folder = tmp_path / "b" / "tensorboard" / "train"
    for name in os.listdir(folder):
        for event in tf.compat.v1.train.summary_iterator(str(folder / name)):
            for value in event.summary.value:
                if value.tag == "skipped_steps":
                    skipped[event.step] = float(tf.make_ndarray(value.tensor))
    assert skipped == {1: 1.0, 2: 2.0}


def tensorboard_steps(folder, tag="loss") -> list[int]:
    steps = []
    for name in sorted(os.listdir(folder / "tensorboard" / "train")):
        for event in tf.compat.v1.train.summary_iterator(
            str(folder / "tensorboard" / "train" / name)
        ):
            steps += [event.step for v in event.summary.value if v.tag == tag]
    return sorted(steps)


def test_a_resume_refuses_other_settings_unless_restarted(dolly_dir, tmp_path):
    """Resuming with --batch_size 8 -> 16 trained nothing and exited 0; now it is refused with
    the differences listed, and --restart starts the run afresh."""
    Trainer(config(dolly_dir, tmp_path, max_steps=2)).run()
    before = (tmp_path / "metrics.csv").read_text()
    with pytest.raises(ValueError) as info:
        Trainer(config(dolly_dir, tmp_path, max_steps=2, batch_size=16, learning_rate=0.01))
    message = str(info.value)
    assert "--batch_size: 8 when started, 16 now" in message
    assert "--learning_rate: 0.002 when started, 0.01 now" in message and "--restart" in message
    assert (tmp_path / "metrics.csv").read_text() == before  # nothing touched
    same = Trainer(config(dolly_dir, tmp_path, max_steps=2, eval_every=1, log_every=1))
    assert same.run()["steps"] == 2  # logging settings may change: resumed, at its end
    fresh = Trainer(config(dolly_dir, tmp_path, max_steps=3, batch_size=16, restart=True))
    assert fresh.run()["steps"] == 3
    assert json.load(open(tmp_path / "train_config.json"))["batch_size"] == 16
    assert [r.split(",")[0] for r in open(tmp_path / "metrics.csv").read().split()[1:]] == [
        "2",
        "3",
    ]


def test_resuming_cuts_the_logs_back_to_the_checkpoint(dolly_dir, tmp_path):
    """Killed after logging steps 3 and 4 but before their checkpoint, a run resumes at 2 and
    logs 3 and 4 again: each step shows once, in metrics.csv and in TensorBoard."""
    killed = Trainer(config(dolly_dir, tmp_path, max_steps=4, log_every=1, save_every=2))
    save = killed.manager.save
    killed.manager.save = lambda checkpoint_number: (
        save(checkpoint_number=checkpoint_number) if checkpoint_number <= 2 else None
    )
    killed.run()
    assert csv_steps(tmp_path) == [1, 2, 3, 4] and tensorboard_steps(tmp_path) == [1, 2, 3, 4]
    events = next((tmp_path / "tensorboard" / "train").iterdir())
    with open(events, "ab") as f:  # and killed mid-write: a record cut short
        f.write(events.read_bytes()[-40:-10])
    Trainer(config(dolly_dir, tmp_path, max_steps=4, log_every=1, save_every=2)).run()
    assert csv_steps(tmp_path) == [1, 2, 3, 4] and tensorboard_steps(tmp_path) == [1, 2, 3, 4]


def test_no_checkpoint_starts_at_step_0_and_drops_the_earlier_logs(dolly_dir, tmp_path, caplog):
    """Killed before its first checkpoint, a run restarted from 0 kept the killed attempt's rows
    (37, 74, 37, 74, 111)."""
    killed = Trainer(config(dolly_dir, tmp_path, max_steps=4, log_every=1, save_every=100))
    killed.manager.save = lambda checkpoint_number: None  # killed before any checkpoint
    killed.run()
    with caplog.at_level("WARNING"):
        Trainer(config(dolly_dir, tmp_path, max_steps=3, log_every=1)).run()
    assert "no checkpoint: starting from step 0" in caplog.text
    assert csv_steps(tmp_path) == [1, 2, 3] and tensorboard_steps(tmp_path) == [1, 2, 3]


def csv_steps(folder) -> list[int]:
    import csv

    with open(folder / "metrics.csv", encoding="utf-8") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


# ---- separate processes: tf.distribute and SIGKILL -----------------------------------------
def worker(cfg: TrainConfig, folder, cpus=1, env=None):
    cfg_path, npz = os.path.join(folder, "cfg.json"), os.path.join(folder, "weights.npz")
    os.makedirs(folder, exist_ok=True)
    with open(cfg_path, "w") as f:
        json.dump(dataclasses.asdict(cfg), f)
    cmd = [sys.executable, "-m", "tests.train_worker", cfg_path, npz, str(cpus)]
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ), npz


def finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def load_npz(path):
    with np.load(path) as f:
        return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]


@pytest.mark.slow
def test_mirrored_equals_one_device(dolly_dir, tmp_path):
    cfg = config(dolly_dir, tmp_path / "mirrored", max_steps=3, strategy="mirrored")
    proc, npz = worker(cfg, str(tmp_path / "mirrored"), cpus=2)
    out = finish(proc)
    assert "REPLICAS 2" in out
    single = Trainer(config(dolly_dir, tmp_path / "one", max_steps=3))
    single.run()
    mirrored = load_npz(npz)
    for a, b in zip(weights(single.model), mirrored):
        np.testing.assert_allclose(a, b, atol=2e-5)


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_multi_worker_mirrored_two_processes(dolly_dir, tmp_path):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    procs = []
    for i in range(2):
        cfg = config(dolly_dir, tmp_path / "run", max_steps=3, strategy="multi_worker_mirrored")
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        procs.append(worker(cfg, str(tmp_path / f"w{i}"), env={"TF_CONFIG": tf_config}))
    for proc, _ in procs:
        finish(proc)
    w0, w1 = (load_npz(npz) for _, npz in procs)
    for a, b in zip(w0, w1):
        np.testing.assert_array_equal(a, b)
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()  # written by the chief


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_same_weights(dolly_dir, tmp_path):
    # 320 examples / 16 = 20 steps an epoch: the run crosses an epoch; dropout tests the RNG.
    def cfg(name):
        return config(
            dolly_dir,
            tmp_path / name,
            max_steps=30,
            batch_size=16,
            save_every=4,
            dropout=0.1,
            eval_every=10,
        )

    whole, whole_npz = worker(cfg("whole"), str(tmp_path / "whole"))
    killed, _ = worker(cfg("killed"), str(tmp_path / "killed"))
    marker = tmp_path / "killed" / "checkpoints" / "ckpt-12.index"
    deadline = time.monotonic() + 240
    while not marker.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert killed.poll() is None, "the run ended before it could be killed"
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "final").exists()
    resumed, resumed_npz = worker(cfg("killed"), str(tmp_path / "killed"))
    out = finish(resumed)
    assert json.loads(out.split("RESULT ", 1)[1])["steps"] == 30
    finish(whole)
    for a, b in zip(load_npz(whole_npz), load_npz(resumed_npz)):
        np.testing.assert_array_equal(a, b)
