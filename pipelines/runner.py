"""The one pipeline runner: `python -m pipelines <verb> <task> [flags]`.

<task> is a task's name or alias (entailment_tuning or rte); every fact about it (its prep flags
and --seq_len, its training defaults) comes from its TaskSpec in gpt2_tf/data/tasks/, so a new
task needs no file here. The verbs every task has:

  prep      prepare its data into TFRecords (its own input flags; --input names its input)
  train     train on them (every TrainConfig field a flag, the task's defaults; --flagfile works)
  test      run a trained model on --prompt / --input_file inputs
  export    export a trained model as a SavedModel for serving
  evaluate  evaluate a trained run beside its base model: metrics, plots, report.md
  staged    staged fine-tuning on data prepared with --num_stages N, stage 1..N in turn

Any other verb runs a task's own tool, pipelines/<task name>/<verb>.py (score for style_tuning,
analyze for dictionary_tuning). The scripts pipelines/<task>/{prep_dataset,train,...}.py are
shims onto this runner (`python -m pipelines.entailment_tuning.train --flagfile=...`).
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import sys

from gpt2_tf import cli


def _run_train(spec):
    cli.run_train()


VERBS = {  # verb -> (define its flags for a TaskSpec, run it)
    "prep": (cli.define_prep_flags, cli.run_prep),
    "train": (cli.define_train_flags, _run_train),
    "test": (cli.define_test_flags, lambda spec: cli.run_test()),
    "export": (cli.define_export_flags, lambda spec: cli.run_export()),
    "evaluate": (cli.define_eval_flags, lambda spec: cli.run_eval()),
    "staged": (cli.define_staged_flags, lambda spec: cli.run_staged()),
}
SCRIPT_VERBS = {"prep_dataset": "prep"}  # a shim's file name -> its verb, where they differ
HERE = os.path.dirname(os.path.abspath(__file__))


def task_tools(name: str) -> list[str]:
    """A task's own verbs: the scripts in pipelines/<name>/ that are not shims."""
    folder = os.path.join(HERE, name)
    if not os.path.isdir(folder):
        return []
    scripts = [f[:-3] for f in sorted(os.listdir(folder)) if f.endswith(".py")]
    return [s for s in scripts if s != "__init__" and SCRIPT_VERBS.get(s, s) not in VERBS]


def usage() -> str:
    from gpt2_tf.data.tasks import all_tasks

    lines = [__doc__.strip(), "", "tasks (name, alias, own verbs):"]
    for spec in all_tasks():
        lines.append(f"  {spec.name:24} {spec.alias:12} {' '.join(task_tools(spec.name))}")
    return "\n".join(lines)


def run(verb: str, task: str, args: list[str], prog: str | None = None) -> None:
    """Defines `verb`'s flags for `task` (a name or alias), parses `args` and runs it."""
    from gpt2_tf.data.tasks import get_task

    try:
        spec = get_task(task)
    except ValueError as e:
        sys.exit(f"error: {e}")
    prog = prog or f"python -m pipelines {verb} {task}"
    if verb in VERBS:
        define, act = VERBS[verb]
        define(spec)

        def main(argv):
            del argv
            act(spec)  # not returned: absl's app.run exits with main's value

        sys.argv = [prog, *args]
        cli.run(main)
        return
    module = f"pipelines.{spec.name}.{verb}"
    if verb not in task_tools(spec.name) or importlib.util.find_spec(module) is None:
        own = task_tools(spec.name)
        sys.exit(f"error: {spec.name} has no verb {verb!r}; verbs: {', '.join([*VERBS, *own])}")
    sys.argv = [prog, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def shim(module: str) -> None:
    """What pipelines/<task>/<script>.py runs: the runner's verb for `script` on `task`."""
    package, script = module.rsplit(".", 1)
    run(SCRIPT_VERBS.get(script, script), package.rsplit(".", 1)[-1], sys.argv[1:], sys.argv[0])


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) > 1 and argv[1] in ("-h", "--help", "help"):
        print(usage())
        return
    if len(argv) < 3 or argv[1].startswith("-") or argv[2].startswith("-"):
        sys.exit("usage: python -m pipelines <verb> <task> [flags]  (--help lists them)")
    run(argv[1], argv[2], argv[3:])
