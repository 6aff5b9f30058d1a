"""`pipelines/<task>/test.py` and the pipelines' errors: inputs read with their file and line,
long prompts fitted beside max_new_tokens, and a user error said in one message."""

import os
import subprocess
import sys

import pytest

from gpt2_tf.data.readers import RowError
from gpt2_tf.serve.inference import load_trained, predict, read_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize(
    "name, data, match",
    [
        (
            "a.jsonl",
            b'{"instruction": "ok"}\n{"instruction": \n',
            r"a\.jsonl: line 2: not valid JSON",
        ),
        ("b.jsonl", b'{"instruction": "ok"}\n["a list"]\n', r"b\.jsonl: line 2: expected a JSON"),
        ("c.txt", b"fine\ncaf\xe9\n", r"c\.txt: line 2: not UTF-8"),
    ],
)
def test_bad_input_lines_name_the_file_and_line(tmp_path, name, data, match):
    with pytest.raises(RowError, match=match):
        read_inputs(input_file=write(tmp_path / name, data))


def test_an_input_without_the_tasks_fields_names_its_line(lm_dir, tmp_path):
    model, tokenizer, task = load_trained(lm_dir)
    path = write(tmp_path / "in.jsonl", b'{"instruction": "Name a colour."}\n{"question": "?"}\n')
    with pytest.raises(
        ValueError,
        match=r"in\.jsonl: line 2: instruction_tuning cannot read "
        r"\['question'\]",
    ):
        predict(model, tokenizer, task, read_inputs(input_file=path), max_new_tokens=4)


def test_a_long_prompt_is_fitted_beside_max_new_tokens(lm_dir):
    """The prompt was fitted to the training seq_len alone, so prompt + max_new_tokens passed
    the model's positions and the call failed."""
    model, tokenizer, task = load_trained(lm_dir)
    long = {"instruction": "Summarise this. " + "words " * 400, "context": "context " * 400}
    for max_new in (20, 100):
        (out,) = predict(model, tokenizer, task, [long], max_new_tokens=max_new)
        prompt = tokenizer.encode(out["prompt"])
        assert len(prompt) <= model.config.n_positions - max_new
        assert out["prompt"].rstrip().endswith("### Response:")  # the template's end is kept
    with pytest.raises(ValueError, match="max_new_tokens 128 leaves no room for a prompt"):
        predict(model, tokenizer, task, [long], max_new_tokens=128)


def pipeline(module, *args):
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_a_user_error_is_one_message_and_exit_status_1(lm_dir, tmp_path):
    bad = write(tmp_path / "in.jsonl", b'{"instruction": \n')
    out = pipeline(
        "pipelines.instruction_tuning.test", f"--model_dir={lm_dir}", f"--input_file={bad}"
    )
    assert out.returncode == 1
    assert f"error: {bad}: line 1: not valid JSON" in out.stderr
    assert "Traceback" not in out.stderr
    again = pipeline(
        "pipelines.instruction_tuning.test",
        f"--model_dir={lm_dir}",
        f"--input_file={bad}",
        "--traceback",
    )
    assert again.returncode != 0 and "Traceback (most recent call last)" in again.stderr
    prep = pipeline(
        "pipelines.dictionary_tuning.prep_dataset",
        f"--output_dir={tmp_path}/d",
        f"--input_jsonl={bad}",
        "--seq_len=3",
    )
    assert prep.returncode == 1 and "error: --seq_len 3 is too small for dictionary_tuning" in (
        prep.stderr
    )
