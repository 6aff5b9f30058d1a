"""`make demo`: the main job end to end, offline, on what ships with gpt2_tf."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_runs_offline_and_shows_sampled_continuations(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "GPT2_TF_TOKENIZER"}
    env["HF_HUB_OFFLINE"] = "1"
    cmd = [sys.executable, "-m", "pipelines.demo", f"--output_dir={tmp_path}", "--epochs=2"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert len(re.findall(r"^  greedy: ", text, re.M)) == 4 + 1  # 4 held out + the SavedModel
    assert len(re.findall(r"^  sampled: ", text, re.M)) == 4 + 1
    assert "Model: a tiny GPT-2" in text and "make demo MODEL=gpt2" in text
    assert not re.search(r"\bnan\b", text, re.I), text  # n/a, never a raw nan
    assert (tmp_path / "run" / "eval" / "report.md").exists()
    assert (tmp_path / "exports" / "1" / "saved_model.pb").exists()
