"""Answer probabilities under a trained style_tuning model: `make score-chat`.

Each question is a conversation so far and one answer (its probability) or several candidate
answers (ranked by probability, and by mean log-probability per token). With --template=task
(the default) the conversation becomes the model's prompt as in prep ("...\\n{speaker}:") and
each answer a reply (" {answer}"); --template=raw scores the texts exactly as given.

Writes scores.jsonl, report.md and scores.png into --output_dir.
"""

import json
import os

from absl import app, flags

from gpt2_tf import cli
from gpt2_tf.core.run_folder import ANALYSIS, FINAL

flags.DEFINE_string("model_dir", os.path.join("runs", "style_tuning", FINAL), "Trained model.")
flags.DEFINE_string(
    "input_file",
    None,
    'JSONL questions: {"prompt": ..., "answer": ...} or {"prompt": ..., "candidates": [...]} '
    'a line (a line may also name its "speaker"). Default: --prompt/--answer, else a few '
    "built-in zero-shot questions.",
)
flags.DEFINE_string("prompt", None, "One conversation so far, e.g. 'A: hi, how are you?'.")
flags.DEFINE_multi_string("answer", [], "An answer to --prompt; repeat the flag to rank several.")
flags.DEFINE_string(
    "output_dir", None, "Where the results go (default: <model_dir>/../analysis/score)."
)
flags.DEFINE_enum(
    "template",
    "task",
    ["task", "raw"],
    "task: the prompt is rendered with the style_tuning template and answers as replies "
    "(' {answer}'); raw: prompt and answer texts are scored exactly as given.",
)
flags.DEFINE_string("speaker", "B", "The replying speaker (template=task), unless a row names one.")
flags.DEFINE_boolean(
    "append_eos",
    False,
    "Score answer + <|endoftext|>: the probability that the reply is exactly the answer.",
)
flags.DEFINE_integer("batch_size", 16, "(prompt, answer) pairs per forward pass.")
FLAGS = flags.FLAGS

# Used when no question is given: chit-chat in the style of the shared chat_dialogs data.
DEFAULT_QUESTIONS = [
    {
        "prompt": "A: hi, how are you doing?",
        "candidates": ["i'm fine. how about yourself?", "the capital of france is paris."],
    },
    {
        "prompt": "A: what do you like to do on weekends?",
        "candidates": ["i like to go to the beach.", "yes.", "seventeen kilograms of iron."],
    },
    {"prompt": "A: do you want to get some lunch?", "answer": "sure, where do you want to go?"},
]


def questions() -> list[dict]:
    from gpt2_tf.analyses.scoring import read_jsonl

    if FLAGS.input_file:
        return read_jsonl(FLAGS.input_file)
    if FLAGS.prompt is not None:
        if not FLAGS.answer:
            raise app.UsageError("--prompt needs at least one --answer")
        if len(FLAGS.answer) == 1:
            return [{"prompt": FLAGS.prompt, "answer": FLAGS.answer[0]}]
        return [{"prompt": FLAGS.prompt, "candidates": FLAGS.answer}]
    return DEFAULT_QUESTIONS


def main(argv):
    del argv
    from gpt2_tf.analyses import scoring
    from gpt2_tf.data.tasks import style
    from gpt2_tf.serve.inference import load_trained

    model, tokenizer, task = load_trained(FLAGS.model_dir)
    render = None
    if FLAGS.template == "task" and task["task"] != "style_tuning":
        raise app.UsageError(
            f"{FLAGS.model_dir} is a {task['task']} model; --template=task reads style_tuning "
            "conversations, pass --template=raw to score texts as given"
        )
    if FLAGS.template == "task":
        reply = lambda a: style.TARGET.format(reply=a.strip())  # noqa: E731  (as prep's targets)
        render = scoring.task_render(tokenizer, task, reply, speaker=FLAGS.speaker)
    results = scoring.score_rows(
        model,
        tokenizer,
        questions(),
        render,
        batch_size=FLAGS.batch_size,
        append_eos=FLAGS.append_eos,
    )
    out = FLAGS.output_dir or os.path.join(
        os.path.dirname(os.path.normpath(FLAGS.model_dir)), ANALYSIS, "score"
    )
    title = f"Answer probabilities under {FLAGS.model_dir} (template={FLAGS.template})"
    scoring.write_report(results, out, title)
    for r in results:
        best = r.get("best", r.get("answer"))
        print(json.dumps({"prompt": r["prompt"][-60:], "best": best}, ensure_ascii=False))
    print(f"wrote scores.jsonl, report.md, scores.png to {out}")


if __name__ == "__main__":
    cli.run(main)
