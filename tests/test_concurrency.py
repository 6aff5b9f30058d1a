"""Nothing mixed, nothing lost: one prep or run per output folder at a time, and a prep that is
killed or fails leaves the data that was there."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from gpt2_tf.core.locking import FolderInUse, FolderLock, lock_path
from tests.conftest import shared

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _files(folder) -> dict[str, bytes]:
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}


@pytest.fixture(scope="module")
def big_emotion(tmp_path_factory):
    """The emotion set with its training split repeated 8 times (128,000 rows): a prep of it
    takes seconds, long enough to be caught mid-way."""
    folder = tmp_path_factory.mktemp("big_emotion")
    for name in ("val.txt", "test.txt"):
        shutil.copy(shared("emotion", name), folder / name)
    with open(shared("emotion", "train.txt"), encoding="utf-8") as f:
        header, *rows = f.read().splitlines()
    (folder / "train.txt").write_text("\n".join([header, *rows * 8]) + "\n", encoding="utf-8")
    return str(folder)


def start(module: str, *args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def prep(input_dir, out, *extra) -> subprocess.Popen:
    module = "pipelines.classification_tuning.prep_dataset"
    return start(module, f"--input={input_dir}", f"--output_dir={out}", "--seq_len=64", *extra)


def wait_for(condition, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, "the process ended before the moment the test waits for"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def locked(folder, inside=False):
    path = lock_path(folder, inside)
    return lambda: os.path.exists(path) and os.path.getsize(path) > 0


def test_a_second_prep_into_a_busy_folder_is_refused_and_the_first_completes(big_emotion, tmp_path):
    out = tmp_path / "emotion"
    first = prep(big_emotion, out, "--seed=1")
    wait_for(locked(out), first)
    second = prep(shared("emotion"), out, "--overwrite")
    _, err = second.communicate(timeout=120)
    assert second.returncode != 0
    assert f"{out} is in use by prep classification_tuning: pid {first.pid}" in err
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    meta = json.load(open(out / "metadata.json"))
    assert meta["seed"] == 1 and meta["splits"]["train"]["examples"] == 16_000 * 8


def test_a_killed_prep_leaves_the_old_data_intact(big_emotion, tmp_path):
    out = tmp_path / "emotion"
    done = prep(shared("emotion"), out)
    assert done.wait(timeout=120) == 0
    before = _files(out)
    killed = prep(big_emotion, out, "--overwrite")
    staging = tmp_path / f".emotion.prep-{killed.pid}"
    shard = staging / "train-00000-of-00001.tfrecord"
    wait_for(lambda: shard.exists() and shard.stat().st_size > 1_000_000, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert _files(out) == before  # nothing of the killed prep under the final names
    again = prep(big_emotion, out, "--overwrite")  # and the next prep clears what it left
    assert again.wait(timeout=300) == 0
    assert not staging.exists() and _files(out) != before


def test_a_failed_prep_leaves_the_old_data_intact(tmp_path, tokenizer):
    from gpt2_tf.data.prep import PrepOptions, prepare
    from gpt2_tf.data.readers import RowError
    from gpt2_tf.data.tasks import get_task

    out, bad = tmp_path / "emotion", tmp_path / "bad"
    task = get_task("classification_tuning")
    prepare(task, tokenizer, PrepOptions(str(out), 64, task={"input": shared("emotion")}))
    before = _files(out)
    shutil.copytree(shared("emotion"), bad)
    with open(bad / "train.txt", "a", encoding="utf-8") as f:
        f.write("a row with an unknown label;elation\n")  # fails at the end of the prep
    with pytest.raises(RowError, match="elation"):
        prepare(
            task, tokenizer, PrepOptions(str(out), 64, overwrite=True, task={"input": str(bad)})
        )
    assert _files(out) == before
    assert sorted(os.listdir(tmp_path)) == [".emotion.lock", "bad", "emotion"]


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    folder = str(tmp_path / "run")
    code = (
        "import sys, time; from gpt2_tf.core.locking import FolderLock; "
        f"FolderLock({folder!r}, 'training').acquire(); print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(FolderInUse, match=f"in use by training: pid {holder.pid} on "):
        FolderLock(folder, "training").acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock = FolderLock(folder, "training").acquire()  # free again: the kernel dropped it
    assert lock.took_over["pid"] == holder.pid
    lock.release()
    assert FolderLock(folder, "training").acquire().took_over is None  # released cleanly


def train(data_dir, out, *extra) -> subprocess.Popen:
    settings = ["--num_samples=0", "--eval_batches=1", "--log_every=5", "--precision=float32"]
    module = "pipelines.instruction_tuning.train"
    return start(module, f"--data_dir={data_dir}", f"--output_dir={out}", *settings, *extra)


def csv_steps(folder) -> list[int]:
    import csv

    with open(os.path.join(folder, "metrics.csv"), encoding="utf-8") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


@pytest.mark.slow
def test_a_second_training_into_a_busy_folder_is_refused_and_the_first_completes(
    dolly_dir, tmp_path
):
    out = tmp_path / "run"
    first = train(dolly_dir, out, "--max_steps=60", "--learning_rate=0.001")
    wait_for(locked(out, inside=True), first)  # a run's lock is in its folder
    second = train(dolly_dir, out, "--max_steps=60", "--learning_rate=0.5")
    _, err = second.communicate(timeout=120)
    assert second.returncode != 0 and f"is in use by training: pid {first.pid}" in err
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    steps = csv_steps(out)  # the first run's rows, once each (log steps, and the epoch's end)
    assert steps == sorted(set(steps)) and [s for s in steps if s % 5 == 0] == list(range(5, 61, 5))
    flags = (out / "flags.txt").read_text().splitlines()
    assert "--learning_rate=0.001" in flags and "--learning_rate=0.5" not in flags
    assert json.load(open(out / "result.json"))["steps"] == 60


# ---- damaged or mismatched inputs to training: errors that name the file and the cause ---------
def test_a_truncated_shard_names_the_file(dolly_dir, tmp_path):
    from gpt2_tf.train.trainer import TrainConfig, Trainer

    data = tmp_path / "data"
    shutil.copytree(dolly_dir, data)
    shard = next(p for p in sorted(data.iterdir()) if p.name.startswith("train-"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a copy cut short
    cfg = TrainConfig(
        str(data),
        str(tmp_path / "run"),
        max_steps=30,
        strategy="one_device",
        num_samples=0,
        precision="float32",
    )
    with pytest.raises(OSError, match=f"{shard}: the TFRecord file is damaged .* prep"):
        Trainer(cfg).run()


def test_a_task_trains_only_on_its_own_data(emotion_dir, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "pipelines.instruction_tuning.train",
        f"--data_dir={emotion_dir}",
        f"--output_dir={tmp_path}",
        "--max_steps=1",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0
    assert f"{emotion_dir} holds classification_tuning data, not instruction_tuning" in out.stderr
    assert not os.path.exists(tmp_path / "checkpoints")


def test_a_truncated_safetensors_file_names_its_path(tmp_path):
    from gpt2_tf import GPT2LanguageModel

    GPT2LanguageModel("tiny").save_pretrained(str(tmp_path / "m"))
    path = tmp_path / "m" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(OSError, match=f"{path}: cannot read the weights .*damaged"):
        GPT2LanguageModel.from_pretrained(str(tmp_path / "m"))


def test_a_folder_reused_by_another_task_or_model_is_refused_by_name(
    emotion_dir, dolly_dir, tmp_path, tokenizer
):
    """`incompatible tensor with shape (128, 64)`, or worse a silent restore of another
    model's weights: a run folder taken by another task is refused (its data differs), one with
    no record of its run too, and a checkpoint that does not fit the model names itself."""
    from gpt2_tf.data.prep import PrepOptions, prepare
    from gpt2_tf.data.tasks import get_task
    from gpt2_tf.train.trainer import TrainConfig, Trainer

    common = dict(
        max_steps=1, batch_size=4, strategy="one_device", num_samples=0, precision="float32"
    )
    Trainer(TrainConfig(emotion_dir, str(tmp_path / "run"), **common)).run()
    with pytest.raises(ValueError, match="--data_dir: .* when started"):
        Trainer(TrainConfig(dolly_dir, str(tmp_path / "run"), **common))
    record = tmp_path / "run" / "train_config.json"
    saved = record.read_text()
    os.remove(record)
    with pytest.raises(ValueError, match="holds a checkpoint, but .* has no train_config.json"):
        Trainer(TrainConfig(dolly_dir, str(tmp_path / "run"), **common))
    # The same --data_dir prepared again for another task (6 emotion classes -> 2 RTE labels).
    record.write_text(saved.replace(emotion_dir, str(tmp_path / "data")))
    prepare(
        get_task("entailment_tuning"),
        tokenizer,
        PrepOptions(str(tmp_path / "data"), 64, task={"input_dir": shared("glue_rte")}),
    )
    with pytest.raises(ValueError, match="checkpoints: its checkpoint does not fit this model"):
        Trainer(TrainConfig(str(tmp_path / "data"), str(tmp_path / "run"), **common)).run()


def test_a_folder_that_cannot_be_swapped_is_replaced_in_place(tmp_path, tokenizer, monkeypatch):
    """A mount point or a folder in a read-only parent: the prep is written inside it and moved
    in file by file, metadata last; a failed prep still leaves the old data."""
    from gpt2_tf.data import prep as prep_module
    from gpt2_tf.data.prep import PrepOptions, prepare
    from gpt2_tf.data.readers import RowError
    from gpt2_tf.data.tasks import get_task

    monkeypatch.setattr(prep_module, "_swappable", lambda folder: False)
    out, task = tmp_path / "emotion", get_task("classification_tuning")
    prepare(task, tokenizer, PrepOptions(str(out), 64, task={"input": shared("emotion")}))
    first = _files(out)
    assert ".lock" in first and first[".lock"] == b""  # inside, released
    bad = tmp_path / "bad"
    shutil.copytree(shared("emotion"), bad)
    with open(bad / "train.txt", "a", encoding="utf-8") as f:
        f.write("a row with an unknown label;elation\n")
    with pytest.raises(RowError, match="elation"):
        prepare(
            task, tokenizer, PrepOptions(str(out), 64, overwrite=True, task={"input": str(bad)})
        )
    assert _files(out) == first
    opts = PrepOptions(str(out), 32, overwrite=True, task={"input": shared("emotion")})
    prepare(task, tokenizer, opts)
    assert json.load(open(out / "metadata.json"))["seq_len"] == 32
    assert sorted(os.listdir(out)) == sorted(first)  # the same files, replaced
