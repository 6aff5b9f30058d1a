"""style_tuning: the four chat formats, exact ids and masks, truncation, splits, bad input."""

import datetime
import json

import pytest

from gpt2_tf.data.prep import PrepOptions, prepare
from gpt2_tf.data.readers import Row, RowError
from gpt2_tf.data.tasks import get_task
from gpt2_tf.data.tasks.style import detect_format, parse_stamp, resolve
from tests.conftest import shared
from tests.test_prep_dictionary import EOT, assert_example, example, records, write_lines

TASK = get_task("style_tuning")
TSV = [
    "hi, how are you?\ti'm fine. and you?",
    "i'm fine. and you?\tgood, thanks.",
    "good, thanks.\tgreat!",
    "what's new?\tnothing much.",
]
PLAIN = [
    "Alice: hey",
    "Bob: hi Alice",
    "how are you?",
    "Alice: good: thanks",
    "",
    "Bob: another chat",
    "Alice: ok",
]
WHATSAPP = [
    "\u200e[12/31/21, 10:15:32 PM] Messages and calls are end-to-end encrypted.",
    "[12/31/21, 10:15:32 PM] Alice: hi",
    "[12/31/21, 10:16:01\u202fPM] Bob: hey!",
    "line two",
    "",
    "[12/31/21, 10:17:00 PM] Alice: what's up",
    "[1/1/22, 9:00:00 AM] Bob: morning",  # 10h43 later: a new conversation
    "[1/1/22, 9:01:00 AM] Alice: good morning",
]
JSON_FLAT = """[
  {"speaker": "Alice", "text": "hi"},
  {"name": "Bob", "message": "hello"},
  {"author": "Alice", "content": "bye"}
]"""
JSON_NESTED = """[
  [{"speaker": "Alice", "text": "hi"}, {"speaker": "Bob", "text": "yo"}],
  [{"speaker": "Bob", "text": "first"},
   {"speaker": "Alice", "text": "q"}, {"speaker": "Bob", "text": "a"}]
]"""


def chat_file(tmp_path, content, name="chat.txt"):
    return write_lines(
        tmp_path / name, content.split("\n") if isinstance(content, str) else content
    )


def options(path, **kw):
    return {"chat_file": path, "chat_format": "auto", **kw}


def rows(path, **kw):
    """What the reader yields: (line, group, speaker, context, reply) a row, or a Drop's reason."""
    out = []
    for item in TASK.read(resolve(options(path, **kw))):
        if isinstance(item, Row):
            f = item.fields
            out.append((item.line, item.group, f["speaker"], f["context"], f["reply"]))
        else:
            out.append(item.reason)
    return out


def run(tokenizer, tmp_path, path, seq_len=64, name="out", task=None, **kw):
    opts = PrepOptions(
        output_dir=str(tmp_path / name), seq_len=seq_len, task=options(path, **(task or {})), **kw
    )
    return prepare(TASK, tokenizer, opts), opts.output_dir


# ---- the four formats ----------------------------------------------------------------------------
def test_tsv_chains_lines_into_conversations(tmp_path):
    path = chat_file(tmp_path, TSV)
    assert rows(path) == [
        (1, "line1", "B", [["A", "hi, how are you?"]], "i'm fine. and you?"),
        (
            3,
            "line1",
            "B",
            [["A", "hi, how are you?"], ["B", "i'm fine. and you?"], ["A", "good, thanks."]],
            "great!",
        ),
        (4, "line4", "B", [["A", "what's new?"]], "nothing much."),
    ]
    assert rows(path, target_speaker="A", context_turns=1) == [
        "first_turn",
        (2, "line1", "A", [["B", "i'm fine. and you?"]], "good, thanks."),
        "first_turn",
    ]


def test_tsv_exact_ids_and_weights(tokenizer, reference, tmp_path):
    path = chat_file(tmp_path, TSV)
    meta, folder = run(tokenizer, tmp_path, path, task={"context_turns": 2})
    assert meta["rows"] == {"read": 3, "written": 3, "dropped": {}}
    assert meta["options"]["target_speaker"] == "B"
    assert meta["options"]["notes"] == ["chat format: tsv (detected)"]
    recs = records(folder, "train")  # two conversations: 80/10/10 rounds to all-train
    prompts = [
        "A: hi, how are you?\nB:",
        "B: i'm fine. and you?\nA: good, thanks.\nB:",  # the last 2 turns
        "A: what's new?\nB:",
    ]
    for i, (prompt, reply) in enumerate(
        zip(prompts, ["i'm fine. and you?", "great!", "nothing much."])
    ):
        assert_example(recs, i, reference.encode(prompt), reference.encode(f" {reply}") + [EOT])


def test_plain_format(tokenizer, reference, tmp_path):
    path = chat_file(tmp_path, PLAIN)
    assert detect_format(path) == "plain"
    context = [["Alice", "hey"], ["Bob", "hi Alice\nhow are you?"]]  # a continued message
    assert rows(path, target_speaker="Alice") == [
        "first_turn",
        (4, "line1", "Alice", context, "good: thanks"),
        (7, "line6", "Alice", [["Bob", "another chat"]], "ok"),  # a blank line: a new conversation
    ]
    meta, folder = run(tokenizer, tmp_path, path, task={"target_speaker": "Alice"})
    assert meta["rows"] == {"read": 3, "written": 2, "dropped": {"first_turn": 1}}
    prompt = reference.encode("Alice: hey\nBob: hi Alice\nhow are you?\nAlice:")
    assert_example(records(folder, "train"), 0, prompt, reference.encode(" good: thanks") + [EOT])


def test_timestamped_format(tokenizer, reference, tmp_path):
    path = chat_file(tmp_path, WHATSAPP)
    assert detect_format(path) == "timestamped"
    assert rows(path, target_speaker="Alice") == [
        "first_turn",
        (6, "line2", "Alice", [["Alice", "hi"], ["Bob", "hey!\nline two"]], "what's up"),
        (8, "line7", "Alice", [["Bob", "morning"]], "good morning"),
    ]
    assert rows(path, target_speaker="Bob") == [
        (3, "line2", "Bob", [["Alice", "hi"]], "hey!\nline two"),
        "first_turn",
    ]
    long_gap = rows(path, target_speaker="Bob", conversation_gap_hours=11)
    assert long_gap[1][:2] == (7, "line2") and len(long_gap[1][3]) == 3
    meta, folder = run(tokenizer, tmp_path, path, task={"target_speaker": "Bob"})
    assert meta["options"]["notes"] == ["chat format: timestamped (detected)", "dates read as mdy"]
    prompt, target = reference.encode("Alice: hi\nBob:"), reference.encode(" hey!\nline two")
    assert_example(records(folder, "train"), 0, prompt, target + [EOT])


def test_timestamped_dash_style_and_day_first_dates(tmp_path):
    path = chat_file(
        tmp_path,
        [
            "31/12/2021, 22:15 - Alice: hi",
            "31/12/2021, 22:16 - Bob: yo",
            "1/1/2022, 03:00 - Bob: ?",
        ],
    )
    opts = resolve(options(path, target_speaker="Bob"))
    assert (opts["chat_format"], opts["date_order"]) == ("timestamped", "dmy")
    assert rows(path, target_speaker="Bob") == [
        (2, "line1", "Bob", [["Alice", "hi"]], "yo"),
        (3, "line1", "Bob", [["Alice", "hi"], ["Bob", "yo"]], "?"),  # 4h45 later: same one
    ]


@pytest.mark.parametrize(
    "date, time, order, want",
    [
        ("12/31/21", "10:15:32 PM", "mdy", (2021, 12, 31, 22, 15, 32)),
        ("12/31/21", "12:05\u202fam", "mdy", (2021, 12, 31, 0, 5, 0)),
        ("12/31/21", "12:05 p.m.", "mdy", (2021, 12, 31, 12, 5, 0)),
        ("31.12.21", "22:15", "dmy", (2021, 12, 31, 22, 15, 0)),
        ("2021-12-31", "09:00:01", "ymd", (2021, 12, 31, 9, 0, 1)),
    ],
)
def test_parse_stamp(date, time, order, want):
    assert parse_stamp(date, time, order) == datetime.datetime(*want)


def test_json_formats(tmp_path):
    flat = chat_file(tmp_path, JSON_FLAT, "flat.json")
    assert detect_format(flat) == "json"
    assert rows(flat, target_speaker="Bob") == [
        (3, "conversation1", "Bob", [["Alice", "hi"]], "hello")  # name/message keys, line 3
    ]
    nested = chat_file(tmp_path, JSON_NESTED, "nested.json")
    assert rows(nested, target_speaker="Bob") == [
        (2, "conversation1", "Bob", [["Alice", "hi"]], "yo"),
        "first_turn",
        (4, "conversation2", "Bob", [["Bob", "first"], ["Alice", "q"]], "a"),
    ]


@pytest.mark.parametrize(
    "lines, want",
    [
        (["", "Alice: hi", "Bob: yo"], "plain"),
        (["[12/31/21, 10:15:32 PM] Alice: hi"], "timestamped"),
        (["12/31/21, 10:15 - Alice: hi"], "timestamped"),
        (["\ufeff2021-12-31 10:15 - Alice: hi"], "timestamped"),
        (["hi\tthere", "there\tyou"], "tsv"),
        (['[{"speaker": "A", "text": "x"}]'], "json"),
    ],
)
def test_detect_format(tmp_path, lines, want):
    assert detect_format(chat_file(tmp_path, lines)) == want


def test_undetectable_format_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--chat_format"):
        detect_format(chat_file(tmp_path, ["just some prose, no speakers"]))


# ---- too long ------------------------------------------------------------------------------------
def test_too_long_drops_oldest_turns_then_cuts_the_last(tokenizer, reference, tmp_path):
    words = " ".join(f"w{i}" for i in range(60))
    path = chat_file(
        tmp_path,
        [
            f"Alice: {words}",
            "Bob: short question?",
            "Alice: yes",
            "",
            f"Bob: {words} end?",
            "Alice: yes",
            "",
            "Bob: hi",
            "Alice: " + "la " * 100,
        ],
    )
    prompt = reference.encode("Bob: short question?\nAlice:")
    target = reference.encode(" yes") + [EOT]
    seq_len = len(prompt) + len(target)  # the first example fits exactly without its oldest turn
    meta, folder = run(tokenizer, tmp_path, path, seq_len, task={"target_speaker": "Alice"})
    assert meta["rows"]["dropped"] == {"first_turn": 1, "reply_too_long": 1}
    assert meta["rows"]["written"] == 2 and meta["truncated"] == 2
    recs = {}
    for split in meta["splits"]:
        part = records(folder, split)
        recs.update({example(part, i)[2]: (part, i) for i in range(len(part["length"]))})
    assert_example(*recs[1], prompt, target)  # index 0: Alice's first turn, dropped
    ids, p, _ = example(*recs[2])
    kept = tokenizer.decode(ids[:p])  # the end of Bob's long turn, the words Alice answers
    assert len(ids) <= seq_len and kept.startswith("Bob: ") and kept.endswith("\nAlice:")
    assert f"{words} end?".endswith(kept[len("Bob: ") : -len("\nAlice:")])
    assert ids[p:] == target


# ---- bad input -----------------------------------------------------------------------------------
def _flat(old, new):
    return JSON_FLAT.replace(old, new)


BAD_DATE = ["[12/31/21, 10:15 PM] A: hi", "[12/32/21, 10:16 PM] B: yo"]
BAD = [  # (file name, lines, target speaker, line, field, reason); .tsv files are read as tsv
    ("a.json", _flat('"hello"}', "}"), "Bob", 3, None, "malformed_json"),
    ("b.json", _flat('"name"', '"who"'), "Alice", 3, "speaker", "missing_field"),
    ("c.json", _flat('"bye"', '""'), "Alice", 4, "content", "empty_field"),
    ("d.json", _flat('"hi"', "[1]"), "Bob", 2, "text", "bad_field"),
    ("e.txt", ["Alice: hi", b"Bob: caf\xe9", "Alice: ok"], "Alice", 2, None, "not_utf8"),
    ("f.txt", ["Alice: hi", "", "continued?", "Bob: yo"], "Bob", 3, None, "no_speaker"),
    ("g.txt", ["Alice: hi", "Bob:", "Alice: ok"], "Alice", 2, "text", "empty_field"),
    ("h.tsv", ["hi\tyo", "yo\t", "x\ty"], "B", 2, "response", "empty_field"),
    ("i.tsv", ["hi\tyo", "yo\tb\tc", "x\ty"], "B", 2, None, "wrong_column_count"),
    ("j.tsv", ["hi\tyo", b"yo\t\xff", "x\ty"], "B", 2, None, "not_utf8"),
    ("k.txt", BAD_DATE, "A", 2, None, "bad_timestamp"),
]


def run_bad(tokenizer, tmp_path, name, lines, target, **kw):
    path = chat_file(tmp_path, lines, name)
    fmt = "tsv" if name.endswith(".tsv") else "auto"
    task = {"target_speaker": target, "chat_format": fmt}
    return run(tokenizer, tmp_path, path, task=task, **kw)[0]


@pytest.mark.parametrize("name, lines, target, line, field, reason", BAD)
def test_bad_input_raises_with_file_line_and_field(
    tokenizer, tmp_path, name, lines, target, line, field, reason
):
    with pytest.raises(RowError) as err:
        run_bad(tokenizer, tmp_path, name, lines, target)
    e, path = err.value, str(tmp_path / name)
    assert (e.file, e.line, e.field, e.reason) == (path, line, field, reason)
    assert str(e).startswith(f"{path}: line {line}")


@pytest.mark.parametrize("name, lines, target, line, field, reason", BAD[1:])
def test_bad_input_skipped_and_counted(
    tokenizer, tmp_path, name, lines, target, line, field, reason
):
    try:
        meta = run_bad(tokenizer, tmp_path, name, lines, target, on_error="skip")
    except ValueError as e:  # nothing left to train on: the prep fails, counting why
        assert "no training examples: 2 rows read, 0 written" in str(e) and f"{reason} 1" in str(e)
        return
    assert meta["rows"]["dropped"].get(reason) == 1
    assert meta["rows"]["read"] == meta["rows"]["written"] + sum(meta["rows"]["dropped"].values())


def test_unreadable_json_is_an_error_even_when_skipping(tokenizer, tmp_path):
    path = chat_file(tmp_path, BAD[0][1], "a.json")  # nothing after the error can be read
    with pytest.raises(RowError, match=r"a\.json: line 3: not valid JSON"):
        run(tokenizer, tmp_path, path, on_error="skip", task={"target_speaker": "Bob"})


def test_unknown_or_missing_target_speaker(tmp_path):
    path = chat_file(tmp_path, PLAIN)
    with pytest.raises(ValueError, match=r"'Carol' never speaks.*'Alice' \(3\), 'Bob' \(2\)"):
        resolve(options(path, target_speaker="Carol"))
    with pytest.raises(ValueError, match=r"pass --target_speaker.*'Alice' \(3\)"):
        resolve(options(path))
    with pytest.raises(ValueError, match="--chat_file"):
        resolve(options(None))


def test_reader_is_deterministic(tmp_path):
    """The engine reads the source twice (groups first, then examples): both must agree."""
    path = chat_file(tmp_path, WHATSAPP)
    opts = resolve(options(path, target_speaker="Alice"))
    first, second = list(TASK.read(opts)), list(TASK.read(opts))
    assert [(r.line, r.group, r.fields) for r in first if isinstance(r, Row)] == [
        (r.line, r.group, r.fields) for r in second if isinstance(r, Row)
    ]


# ---- the real data -------------------------------------------------------------------------------
def expected_dialog_examples(path, target, context_turns=6):
    """line -> (prompt, reply) for each target turn of dialogs.txt, chained as the task says."""
    conversations, previous = [], None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            utterance, response = line.rstrip("\n").split("\t")
            if utterance != previous:
                conversations.append([(utterance, lineno)])
            conversations[-1].append((response, lineno))
            previous = response
    out = {}
    for turns in conversations:
        # Turns are stripped of white space at their ends (the data has trailing spaces).
        named = [("AB"[k % 2], text.strip(), lineno) for k, (text, lineno) in enumerate(turns)]
        for k, (speaker, text, lineno) in enumerate(named):
            if speaker == target and k > 0:
                context = named[max(0, k - context_turns) : k]
                prompt = "\n".join(f"{s}: {t}" for s, t, _ in context) + f"\n{target}:"
                out[lineno] = (prompt, text)
    return out, len(conversations)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["B", "A"])
def test_real_dialogs(tokenizer, reference, tmp_path, target):
    path = shared("chat_dialogs", "dialogs.txt")
    expected, n_conversations = expected_dialog_examples(path, target)
    meta, folder = run(tokenizer, tmp_path, path, 256, task={"target_speaker": target})
    rows_ = meta["rows"]
    assert meta["options"]["chat_format"] == "tsv"
    assert rows_["read"] == rows_["written"] + sum(rows_["dropped"].values())
    assert rows_["written"] == len(expected) - rows_["dropped"].get("reply_too_long", 0)
    assert rows_["dropped"].get("first_turn", 0) == (n_conversations if target == "A" else 0)
    source = list(TASK.read(resolve(options(path, target_speaker=target))))
    split_of, mismatches = {}, 0
    for split in ("train", "validation", "test"):
        recs = records(folder, split)
        assert recs["length"].max() <= 256
        for i in range(len(recs["length"])):
            ids, p, index = example(recs, i)
            row = source[index]
            assert split_of.setdefault(row.group, split) == split  # a conversation, one split
            prompt, reply = expected[row.line]
            assert tokenizer.decode(ids[p:]) == f" {reply}<|endoftext|>"
            if ids[:p] != reference.encode(prompt):
                mismatches += 1  # only a truncated example may differ
    assert mismatches == meta["truncated"]
    groups = [sum(1 for s in split_of.values() if s == name) for name in ("validation", "test")]
    assert groups == [round(len(split_of) * 0.1)] * 2 and len(split_of) == n_conversations
    assert json.load(open(f"{folder}/metadata.json"))["task"] == "style_tuning"
