"""The training step as one XLA program (`--jit_compile=true`) against the graph step, on real
rows: the same weights after the same steps (full fine-tuning, LoRA, packed Dolly rows, bucketed
emotion rows, gradient accumulation), an exact resume, multi-worker training, and
`--jit_compile=auto`'s choice per device."""

import json

import numpy as np
import pytest

from gpt2_tf.core import hardware, run_folder
from gpt2_tf.train.step import TrainStep
from gpt2_tf.train.trainer import TrainConfig, Trainer
from tests.test_training import config, finish, free_ports, load_npz, weights, worker


def _run(data_dir, out, **kw):
    trainer = Trainer(config(data_dir, out, **kw))
    result = trainer.run()
    return trainer, result


def _assert_same_training(data_dir, tmp_path, atol=5e-5, **kw):
    """The two steps sum in different orders (oneDNN's kernels against XLA's): their gradients
    differ in the last bits, and Adam, which divides by each gradient's own scale, carries that
    into an update of up to a few 1e-5 on weights whose gradient is near zero (seen: 2.4e-5 of
    8,192 weights after 3 steps, on an AVX2-only CPU with oneDNN). The losses agree to 1e-5."""
    graph, graph_result = _run(data_dir, tmp_path / "graph", jit_compile="false", **kw)
    xla, xla_result = _run(data_dir, tmp_path / "xla", jit_compile="true", **kw)
    assert graph.step.jit_compile is False and xla.step.jit_compile is True
    for a, b in zip(weights(graph.model), weights(xla.model)):
        np.testing.assert_allclose(a, b, atol=atol)
    for key in ("loss", "grad_norm", "learning_rate", "padding_share"):
        assert xla_result["train"][key] == pytest.approx(graph_result["train"][key], rel=1e-4)
    assert xla_result["validation"]["loss"] == pytest.approx(
        graph_result["validation"]["loss"], rel=1e-5
    )
    return graph, xla


@pytest.mark.slow
@pytest.mark.parametrize("path", ["speed", "plain"])
def test_xla_step_equals_graph_step_on_packed_dolly_rows(dolly_dir, tmp_path, monkeypatch, path):
    """Both model paths (`GPT2_TF_PLAIN`), each under both steps."""
    monkeypatch.setenv("GPT2_TF_PLAIN", "1" if path == "plain" else "0")
    graph, xla = _assert_same_training(dolly_dir, tmp_path, max_steps=3, log_every=1)
    assert xla.packing and graph.packing


@pytest.mark.slow
def test_xla_step_equals_graph_step_with_lora_and_grad_accumulation(dolly_dir, tmp_path):
    kw = dict(max_steps=3, log_every=1, lora_rank=4, grad_accum_steps=2)
    _, xla = _assert_same_training(dolly_dir, tmp_path, **kw)
    assert all("lora" in v.path for v in xla.model.trainable_variables)


@pytest.mark.slow
def test_xla_step_equals_graph_step_on_bucketed_emotion_rows(emotion_dir, tmp_path):
    kw = dict(max_steps=3, log_every=1, batch_size=16, eval_batches=2)
    _, xla = _assert_same_training(emotion_dir, tmp_path, **kw)
    assert xla.bucketing
    # XLA batches are padded to a coarser grid (fewer compiled shapes); the plan is the same.
    x, _, _ = next(iter(xla._epoch_dataset(0, 0)))
    assert x["token_ids"].shape[1] % 8 == 0


@pytest.mark.slow
def test_a_stopped_xla_run_resumes_to_the_same_weights(dolly_dir, tmp_path, monkeypatch):
    kw = dict(max_steps=5, save_every=2, jit_compile="true", dropout=0.1, log_every=1)
    whole, _ = _run(dolly_dir, tmp_path / "whole", **kw)
    killed = Trainer(config(dolly_dir, tmp_path / "killed", **kw))
    real_after_step = killed._after_step

    def crash(step, out):
        if step == 3:
            raise KeyboardInterrupt("stopped")
        return real_after_step(step, out)

    monkeypatch.setattr(killed, "_after_step", crash)
    with pytest.raises(KeyboardInterrupt):
        killed.run()
    assert run_folder.checkpoint_step(str(tmp_path / "killed" / run_folder.CHECKPOINTS)) == 2
    resumed, result = _run(dolly_dir, tmp_path / "killed", **kw)
    assert result["steps"] == 5
    for a, b in zip(weights(whole.model), weights(resumed.model)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_multi_worker_xla_steps_match_each_other_and_one_device(dolly_dir, tmp_path):
    """Two workers (one replica each): the gradients of each worker's XLA program are summed
    between the programs; both end with the weights of one device training on both halves."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    procs = []
    for i in range(2):
        cfg = config(
            dolly_dir,
            tmp_path / "run",
            max_steps=3,
            strategy="multi_worker_mirrored",
            jit_compile="true",
        )
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        procs.append(worker(cfg, str(tmp_path / f"w{i}"), env={"TF_CONFIG": tf_config}))
    for proc, _ in procs:
        assert "REPLICAS 2" in finish(proc)
    w0, w1 = (load_npz(npz) for _, npz in procs)
    for a, b in zip(w0, w1):
        np.testing.assert_array_equal(a, b)


def test_auto_chooses_by_device(monkeypatch):
    monkeypatch.setattr(hardware, "_gpu_capabilities", lambda: [])
    monkeypatch.setattr(hardware, "onednn_enabled", lambda: True)
    assert hardware.resolve_jit_compile("auto") == (
        False,
        "TensorFlow runs oneDNN, whose kernels ran the graph step faster",
    )
    monkeypatch.setattr(hardware, "onednn_enabled", lambda: False)
    assert hardware.resolve_jit_compile("auto")[0] is True
    assert hardware.resolve_jit_compile("auto", strategy="tpu")[0] is True
    assert hardware.resolve_jit_compile("auto", precision="mixed_float16")[0] is False
    assert hardware.resolve_jit_compile("false") == (False, "set explicitly")
    monkeypatch.setattr(hardware, "_gpu_capabilities", lambda: [(8, 0), (8, 0)])
    monkeypatch.setattr(hardware, "onednn_enabled", lambda: True)
    assert hardware.resolve_jit_compile("auto", strategy="mirrored", replicas=2)[0] is True


def test_what_xla_cannot_run_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(hardware, "_gpu_capabilities", lambda: [])
    with pytest.raises(ValueError, match="several logical CPU devices"):
        hardware.resolve_jit_compile("true", strategy="mirrored", replicas=2)
    with pytest.raises(ValueError, match="mixed_float16"):
        hardware.resolve_jit_compile("true", precision="mixed_float16")
    assert hardware.resolve_jit_compile("auto", strategy="mirrored", replicas=2)[0] is False
    with pytest.raises(ValueError, match="jit_compile must be one of"):
        TrainConfig(data_dir="d", output_dir="o", jit_compile="yes")


def test_a_float16_xla_step_is_refused():
    import keras
    import tensorflow as tf

    from gpt2_tf.train.optim import make_optimizer

    opt = make_optimizer(1e-3, 0, 10, "linear", 0.0, "mixed_float16")
    with pytest.raises(ValueError, match="loss scaling needs the graph step"):
        TrainStep(
            keras.Sequential(), opt, tf.distribute.get_strategy(), is_lm=True, jit_compile=True
        )


def test_the_resolved_choice_is_recorded(dolly_dir, tmp_path):
    trainer = Trainer(config(dolly_dir, tmp_path, max_steps=1))
    trainer.run()
    saved = run_folder.read_config(str(tmp_path))
    assert (
        saved["jit_compile"] in ("true", "false")
        and saved["jit_compile"] == trainer.cfg.jit_compile
    )
