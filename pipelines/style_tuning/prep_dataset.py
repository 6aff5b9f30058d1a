"""Prep a chat log into padded TFRecords that teach one person's texting style: `make prep-chat`."""

from absl import flags

from gpt2_tf import cli

flags.DEFINE_string(
    "chat_file",
    None,
    "Chat log: `Name: message` lines, a WhatsApp export, utterance<TAB>response lines, or JSON "
    "messages (see gpt2_tf/tasks/style.py). Required: this task has no default source.",
)
flags.DEFINE_enum(
    "chat_format",
    "auto",
    ["auto", "plain", "timestamped", "tsv", "json"],
    "Format of --chat_file; auto tells it from the first lines.",
)
flags.DEFINE_string(
    "target_speaker",
    None,
    "Whose style to learn, the name as the log writes it. Required, except for tsv logs "
    "(default B, the responder).",
)
flags.DEFINE_integer("context_turns", 6, "Earlier turns in each prompt (the latest ones).")
flags.DEFINE_float(
    "conversation_gap_hours", 6.0, "Timestamped logs: a longer silence starts a new conversation."
)
cli.define_prep_flags("style_tuning", seq_len=256)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    cli.run_prep(
        "style_tuning",
        {
            "chat_file": FLAGS.chat_file,
            "chat_format": FLAGS.chat_format,
            "target_speaker": FLAGS.target_speaker,
            "context_turns": FLAGS.context_turns,
            "conversation_gap_hours": FLAGS.conversation_gap_hours,
        },
    )


if __name__ == "__main__":
    cli.run(main)
