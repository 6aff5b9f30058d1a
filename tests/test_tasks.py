"""A task is one file (issue 18): its TaskSpec holds its alias, its prep flags and --seq_len, its
training defaults; the runner (`python -m pipelines <verb> <task>`) and the Makefile's pattern
rules need nothing else. A new task written in one module is prepped, trained and run here."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from absl import flags

from gpt2_tf import cli
from gpt2_tf.data.tasks import TASKS, Flag, TaskSpec, all_tasks, get_task, register

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
ALIASES = {
    "dolly": "instruction_tuning",
    "emotion": "classification_tuning",
    "rte": "entailment_tuning",
    "dictionary": "dictionary_tuning",
    "chat": "style_tuning",
    "text": "text_tuning",
}


class defined:
    """The flags `define(...)` defines, removed again on leaving (absl's FLAGS is global)."""

    def __init__(self, define, *args):
        self.define, self.args = define, args

    def __enter__(self):
        before = set(FLAGS)
        self.define(*self.args)
        self.names = set(FLAGS) - before
        return {name: FLAGS[name].default for name in self.names}

    def __exit__(self, *exc):
        for name in self.names:
            if name in FLAGS:
                delattr(FLAGS, name)


def test_aliases_resolve_to_the_tasks():
    for alias, name in ALIASES.items():
        assert get_task(alias) is get_task(name)
        assert get_task(name).alias == alias
    with pytest.raises(ValueError, match="unknown task 'nope'.*rte"):
        get_task("nope")


def test_every_prep_default_comes_from_the_spec():
    for spec in all_tasks():
        with defined(cli.define_prep_flags, spec.alias) as d:
            assert d["seq_len"] == spec.seq_len
            assert d["output_dir"] == os.path.join("tfrecords", spec.name)
            for flag in spec.prep_flags:
                assert d[flag.name] == flag.default, (spec.name, flag.name)
            assert spec.input_flag and FLAGS["input"].name in (spec.input_flag, "input")
    assert {s.name: s.seq_len for s in all_tasks()}["instruction_tuning"] == 1024


def test_rte_train_defaults_reach_the_flags():
    with defined(cli.define_train_flags, "rte") as d:
        assert (d["lora_rank"], d["lora_alpha"]) == (8, 16)
        assert (d["learning_rate"], d["batch_size"]) == (1e-3, 16)
        assert d["data_dir"] == os.path.join("tfrecords", "entailment_tuning")
    with defined(cli.define_train_flags, "emotion") as d:
        assert (d["lora_rank"], d["batch_size"]) == (0, 32)
    with defined(cli.define_staged_flags, "text") as d:  # staged reads text_tuning's spec too
        assert (d["batch_size"], d["learning_rate"]) == (8, 5e-4) and "stage" not in d
        assert d["output_dir"] == os.path.join("runs", "text_tuning_staged")


def test_register_and_bad_specs():
    spec = TaskSpec(
        "toy_tuning", "lm", read=None, encode=None, template="{text}", source=None, alias="toy"
    )
    try:
        assert register(spec) is get_task("toy")
        with pytest.raises(ValueError, match="alias 'rte'"):
            register(TaskSpec("x", "lm", None, None, "", None, alias="rte"))
    finally:
        TASKS.pop("toy_tuning")
    with pytest.raises(ValueError, match="at most one"):
        TaskSpec("y", "lm", None, None, "", None, prep_flags=(Flag("a", 1, "", input=True),) * 2)
    with pytest.raises(ValueError, match="kind"):
        Flag("a", 1, "", "number")
    bad = TaskSpec("z_tuning", "lm", None, None, "", None, train_defaults={"lora": 1})
    TASKS["z_tuning"] = bad
    try:
        with pytest.raises(ValueError, match="names no training flag"):
            cli.define_train_flags("z_tuning")  # refused before any flag is defined
    finally:
        TASKS.pop("z_tuning")


# One file: everything the pipelines need to know about the task. Found through $GPT2_TF_TASKS
# (a task outside gpt2_tf/data/tasks/; a built-in one is a line in TASKS instead).
NEW_TASK = """
from gpt2_tf.data.readers import Row
from gpt2_tf.data.tasks import Encoded, Flag, TaskSpec


def read(options):
    with open(options["lines_file"], encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            text = line.strip().upper() if options["shout"] else line.strip()
            yield Row(options["lines_file"], i, {"text": text})


def encode(row, ctx):
    tok = ctx.tokenizer
    target = tok.encode(" " + row.fields["text"])[: ctx.seq_len - 3] + [tok.eos_id]
    return Encoded(tok.encode("Line:"), target)


def prompt(fields, ctx):
    return ctx.tokenizer.encode("Line:")


TASK = TaskSpec(
    name="line_tuning",
    alias="lines",
    kind="lm",
    read=read,
    encode=encode,
    prompt=prompt,
    template="Line: {text}<|endoftext|>",
    source=lambda options: {"paths": [options["lines_file"]]},
    seq_len=24,
    prep_flags=(
        Flag("lines_file", None, "One text a line.", required=True, input=True),
        Flag("shout", False, "Upper-case every line.", "boolean"),
    ),
    train_defaults={"batch_size": 4, "max_steps": 2, "log_every": 1, "eval_batches": 1},
)
"""


def pipeline(verb, task, *args, env):
    cmd = [sys.executable, "-m", "pipelines", verb, task, *args]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_a_new_task_is_one_file(tmp_path):
    (tmp_path / "line_task.py").write_text(textwrap.dedent(NEW_TASK))
    lines = tmp_path / "lines.txt"
    lines.write_text("".join(f"line number {i} of the little file\n" for i in range(40)))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), ROOT]),
        "GPT2_TF_TASKS": "line_task",
        "CUDA_VISIBLE_DEVICES": "",
    }
    data, run = tmp_path / "data", tmp_path / "run"
    # make prep-lines INPUT=... passes --input: the runner makes it the task's --lines_file.
    pipeline("prep", "lines", f"--input={lines}", "--shout", f"--output_dir={data}", env=env)
    meta = json.load(open(data / "metadata.json"))
    assert (meta["task"], meta["seq_len"]) == ("line_tuning", 24)  # the spec's seq_len
    assert meta["options"] == {"lines_file": str(lines), "shout": True}
    pipeline("train", "lines", f"--data_dir={data}", f"--output_dir={run}", env=env)
    flags_txt = open(run / "flags.txt").read()
    assert "--batch_size=4" in flags_txt and "--max_steps=2" in flags_txt  # train_defaults
    assert json.load(open(run / "final" / "task.json"))["task"] == "line_tuning"
    out = pipeline("test", "line_tuning", f"--model_dir={run / 'final'}", "--prompt=x", env=env)
    assert '"input": {"text": "x"}' in out
    with pytest.raises(AssertionError, match="has no verb 'score'"):
        pipeline("score", "lines", env=env)


def test_the_runner_runs_a_tasks_own_tools_and_says_what_it_knows():
    env = {**os.environ, "PYTHONPATH": ROOT, "CUDA_VISIBLE_DEVICES": ""}

    def runner(*args):
        cmd = [sys.executable, "-m", "pipelines", *args]
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    # analyze is pipelines/dictionary_tuning/analyze.py, run by the alias (absl's help exits 1)
    assert "--word_tokens" in runner("analyze", "dictionary", "--helpshort").stdout
    listing = runner("--help").stdout
    assert "entailment_tuning" in listing and " rte " in listing and "score" in listing
    done = runner("prep", "nope")
    assert done.returncode != 0 and "unknown task 'nope'" in done.stderr


def test_dolly_at_gpt2s_context_keeps_the_rows_512_dropped(tokenizer, tmp_path):
    """prep-dolly's default seq_len is GPT-2's 1024: of the sample's rows dropped at 512 because
    the response alone does not fit, all are kept but those whose response exceeds GPT-2's whole
    context (with packing the long rows cost no padding)."""
    from gpt2_tf.data.prep import PrepOptions, prepare
    from tests.conftest import shared

    spec = get_task("dolly")
    rows = {"input_jsonl": shared("dolly", "dolly_first743.jsonl")}
    dropped = {}
    for seq_len in (512, spec.seq_len):
        opts = PrepOptions(str(tmp_path / str(seq_len)), seq_len, task=rows)
        dropped[seq_len] = prepare(spec, tokenizer, opts)["rows"]["dropped"]
    assert spec.seq_len == 1024
    at_512, at_1024 = (dropped[n].get("response_too_long", 0) for n in (512, 1024))
    assert at_1024 < at_512, (at_512, at_1024)
