"""style_tuning: learn one person's texting style from a chat log.

Each turn of the target speaker that follows an earlier turn of its conversation is an example:
the last `context_turns` turns as "Name: text" lines, then "\\n{target}:" -> " {reply}"
<|endoftext|>, with the loss on the reply only. Four log formats, told apart from the first lines
unless --chat_format names one:

  plain        `Name: message` lines; a blank line ends a conversation
  timestamped  WhatsApp exports, `[12/31/21, 10:15:32 PM] Name: message` or
               `12/31/21, 10:15 - Name: message`; a silence over --conversation_gap_hours ends one
  tsv          `utterance<TAB>response` lines, chained while a line's utterance repeats the line
               before's response; the speakers are "A" (the first utterance) and "B"
  json         a list of {speaker|name|author, text|message|content} objects (one conversation),
               or a list of such lists (conversations)

In plain and timestamped logs a line with no `Name:` prefix continues the message before it (so a
continuation line that itself reads like `Name: text` starts a message). A conversation stays in
one split (`Row.group`), so test replies come from conversations the model never saw.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import datetime
import itertools
import json
import os
import re

from gpt2_tf.data.readers import Row, RowError, iter_lines, require
from gpt2_tf.data.tasks import Drop, EncodeContext, Encoded, Flag, TaskSpec

FORMATS = ("plain", "timestamped", "tsv", "json")
TURN = "{speaker}: {text}"
PROMPT_END = "\n{target}:"
TARGET = " {reply}"
PREP_FLAGS = (
    Flag(
        "chat_file",
        None,
        "Chat log: `Name: message` lines, a WhatsApp export, utterance<TAB>response lines, or "
        "JSON messages (see gpt2_tf/data/tasks/style.py). Required: this task has no default "
        "source.",
        input=True,
    ),
    Flag(
        "chat_format",
        "auto",
        "Format of --chat_file; auto tells it from the first lines.",
        "enum",
        choices=("auto", *FORMATS),
    ),
    Flag(
        "target_speaker",
        None,
        "Whose style to learn, the name as the log writes it. Required, except for tsv logs "
        "(default B, the responder).",
    ),
    Flag("context_turns", 6, "Earlier turns in each prompt (the latest ones).", "integer"),
    Flag(
        "conversation_gap_hours",
        6.0,
        "Timestamped logs: a longer silence starts a new conversation.",
        "float",
    ),
)
TRAIN_DEFAULTS = {"batch_size": 8, "learning_rate": 5e-4}
SPEAKER_KEYS, TEXT_KEYS = ("speaker", "name", "author"), ("text", "message", "content")

_INVISIBLE = "\u200e\u200f\ufeff"  # marks that WhatsApp and editors put before a line
_PLAIN = re.compile(r"(?P<name>[^:\s][^:]{0,59}?):(?:\s(?P<text>.*))?$")
_STAMP = re.compile(
    r"\[?(?P<date>\d{1,4}[./-]\d{1,2}[./-]\d{1,4}),?\s"
    r"(?P<time>\d{1,2}:\d{2}(?::\d{2})?(?:\s?[AaPp]\.?\s?[Mm]\.?)?)(?:\]|\s[-\u2013])\s(?P<rest>.*)$"
)
_SPEAKER = re.compile(r"(?P<name>[^:]+?):(?:\s(?P<text>.*))?$")
_TIME = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?\s?([AaPp])?")
BREAK, SKIP = "blank line", "system message"  # markers between the line parser and its caller


@dataclasses.dataclass
class Turn:
    speaker: str
    text: str
    line: int  # first line of the message
    conversation: str = ""
    stamp: tuple[str, str] | None = None  # (date, time) as written, in timestamped logs


# ---- plain and timestamped logs: one message a header line, then continuation lines --------------
def _plain_header(text: str, lineno: int):
    if not text.strip():
        return BREAK
    m = _PLAIN.match(text.lstrip(_INVISIBLE))
    return Turn(m["name"].strip(), m["text"] or "", lineno) if m else None


def _stamped_header(text: str, lineno: int):
    m = _STAMP.match(text.lstrip(_INVISIBLE))
    if not m:
        return None  # blank lines too: WhatsApp messages can hold them
    s = _SPEAKER.match(m["rest"])
    if not s:  # "Messages and calls are end-to-end encrypted", "Alice left"
        return SKIP
    name = s["name"].strip(_INVISIBLE + " ~\u202f")  # "~ Alice": a number not in the contacts
    return Turn(name, s["text"] or "", lineno, stamp=(m["date"], m["time"]))


def _finish(path: str, turn: Turn) -> Turn | RowError:
    turn.text = turn.text.strip()
    if not turn.text:
        return RowError(path, turn.line, "text", "empty_field", "empty message")
    return turn


def _line_messages(path: str, header):
    """Turns (and BREAKs) of a line-based log; `header` parses a message's first line."""
    current = None  # the Turn being read, or BREAK / SKIP / None when there is none
    for item in iter_lines(path):
        if isinstance(item, RowError):
            yield item
            continue
        lineno, text = item
        head = header(text, lineno)
        if head is None:
            if isinstance(current, Turn):
                current.text += "\n" + text
            elif current is not SKIP and text.strip():
                yield RowError(
                    path, lineno, None, "no_speaker", "no 'Name:', no message to continue"
                )
            continue
        if isinstance(current, Turn):
            yield _finish(path, current)
        if head is BREAK:
            yield BREAK
        current = head
    if isinstance(current, Turn):
        yield _finish(path, current)


def _by_blank_lines(items):
    conversation = None
    for item in items:
        if item is BREAK:
            conversation = None
            continue
        if isinstance(item, Turn):
            conversation = conversation or f"line{item.line}"
            item.conversation = conversation
        yield item


def parse_stamp(date: str, time: str, order: str) -> datetime.datetime:
    """A WhatsApp date and time; `order` (mdy, dmy, ymd) says how the date's numbers read."""
    a, b, c = map(int, re.split(r"[./-]", date))
    year, month, day = {"mdy": (c, a, b), "dmy": (c, b, a), "ymd": (a, b, c)}[order]
    hour, minute, second, half = _TIME.match(time).groups()
    hour = int(hour) % 12 + (12 if half in ("P", "p") else 0) if half else int(hour)  # 12 AM = 0
    year += 2000 if year < 100 else 0
    return datetime.datetime(year, month, day, hour, int(minute), int(second or 0))


def _by_time_gap(items, path: str, order: str, gap_hours: float):
    conversation, last = None, None
    for item in items:
        if isinstance(item, Turn):
            try:
                when = parse_stamp(*item.stamp, order)
            except ValueError as e:
                yield RowError(path, item.line, None, "bad_timestamp", f"{item.stamp}: {e}")
                continue
            if last is None or (when - last).total_seconds() > gap_hours * 3600:
                conversation = f"line{item.line}"
            item.conversation, last = conversation, when
        yield item


def date_order(path: str) -> str:
    """mdy, dmy or ymd: a number over 12 settles it; else dmy for dotted dates, mdy otherwise."""
    dates = []
    for item in iter_lines(path):
        m = None if isinstance(item, RowError) else _STAMP.match(item[1].lstrip(_INVISIBLE))
        dates += [m["date"]] if m else []
    numbers = [re.split(r"[./-]", d) for d in dates]
    if any(len(n[0]) == 4 for n in numbers):
        return "ymd"
    if any(int(n[0]) > 12 for n in numbers):
        return "dmy"
    if any(int(n[1]) > 12 for n in numbers):
        return "mdy"
    return "dmy" if any("." in d for d in dates) else "mdy"


# ---- tsv and json --------------------------------------------------------------------------------
def _tsv_pair(path: str, lineno: int, text: str) -> list[str] | RowError | None:
    """(utterance, response) of a line; None for a blank line."""
    if not text.strip():
        return None
    parts = text.split("\t")
    if len(parts) != 2:
        detail = f"{len(parts)} tab-separated columns, expected 2 (utterance, response)"
        return RowError(path, lineno, None, "wrong_column_count", detail)
    for field, value in zip(("utterance", "response"), parts):
        if not value.strip():
            return RowError(path, lineno, field, "empty_field", "required field is empty")
    return parts


def _tsv_turns(path: str):
    """Chains utterance/response lines into conversations of alternating speakers A and B."""
    previous, conversation, count = None, None, 0
    for item in iter_lines(path):
        pair = item if isinstance(item, RowError) else _tsv_pair(path, *item)
        if isinstance(pair, RowError):
            yield pair
            previous = None  # the chain cannot be followed across a bad line
        elif pair is not None:
            (utterance, response), lineno = pair, item[0]
            if utterance != previous:
                conversation, count = f"line{lineno}", 1
                yield Turn("A", utterance.strip(), lineno, conversation)
            yield Turn("AB"[count % 2], response.strip(), lineno, conversation)
            previous, count = response, count + 1


class _LinedList(list):
    line = 1


def _decode_with_lines(text: str):
    """json.loads, with "_line" on each object and `.line` on each list (where it starts)."""
    starts = [0, *(m.end() for m in re.finditer("\n", text))]
    line = lambda pos: bisect.bisect_right(starts, pos)  # noqa: E731  (1-based)

    def parse_object(s_and_end, *args):
        obj, end = json.decoder.JSONObject(s_and_end, *args)
        return {**obj, "_line": line(s_and_end[1] - 1)}, end

    def parse_array(s_and_end, *args):
        values, end = json.decoder.JSONArray(s_and_end, *args)
        out = _LinedList(values)
        out.line = line(s_and_end[1] - 1)
        return out, end

    decoder = json.JSONDecoder()
    decoder.parse_object, decoder.parse_array = parse_object, parse_array
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # the C scanner ignores the hooks
    return decoder.decode(text)


def _json_turn(path: str, obj, conversation: str, line: int) -> Turn | RowError:
    if not isinstance(obj, dict):
        detail = f"expected a message object, got {type(obj).__name__}"
        return RowError(path, line, None, "malformed_json", detail)
    row = Row(path, obj["_line"], obj)
    try:
        speaker = require(row, next((k for k in SPEAKER_KEYS if k in obj), SPEAKER_KEYS[0]))
        text = require(row, next((k for k in TEXT_KEYS if k in obj), TEXT_KEYS[0]))
    except RowError as e:
        return e
    return Turn(speaker.strip(), text.strip(), row.line, conversation)


def _json_turns(path: str):
    with open(path, "rb") as f:
        raw = f.read()
    try:
        data = _decode_with_lines(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        detail = f"not UTF-8 ({e.reason} at byte {e.start})"
        yield RowError(path, raw.count(b"\n", 0, e.start) + 1, None, "not_utf8", detail)
        return
    except json.JSONDecodeError as e:  # the rest of the file cannot be read past this point
        yield RowError(
            path, e.lineno, None, "malformed_json", f"not valid JSON ({e.msg}, column {e.colno})"
        )
        return
    if not isinstance(data, list):
        detail = f"expected a list of messages or of conversations, got {type(data).__name__}"
        yield RowError(path, 1, None, "malformed_json", detail)
        return
    nested = bool(data) and all(isinstance(c, list) for c in data)
    for index, conversation in enumerate(data if nested else [data]):
        for obj in conversation:
            yield _json_turn(path, obj, f"conversation{index + 1}", conversation.line)


# ---- the task ------------------------------------------------------------------------------------
def turns(options: dict):
    """Every Turn of the log (with its conversation), and a RowError for each bad line."""
    path, fmt = options["chat_file"], options["chat_format"]
    if fmt == "plain":
        return _by_blank_lines(_line_messages(path, _plain_header))
    if fmt == "timestamped":
        return _by_time_gap(
            _line_messages(path, _stamped_header),
            path,
            options["date_order"],
            options["conversation_gap_hours"],
        )
    return _tsv_turns(path) if fmt == "tsv" else _json_turns(path)


def detect_format(path: str) -> str:
    """The log's format from its first non-blank lines (see the module docstring)."""
    with open(path, "rb") as f:
        head = [b.decode("utf-8", "replace").rstrip("\r\n") for b in itertools.islice(f, 200)]
    lines = [x.lstrip(_INVISIBLE) for x in head if x.strip()][:50]
    if not lines:
        raise ValueError(f"{path}: the chat file is empty")
    if lines[0].lstrip().startswith(("[", "{")) and not _STAMP.match(lines[0]):
        return "json"
    # The format most of the first lines have: one bad line (skipped under --on_error=skip)
    # does not decide it.
    share = {
        "timestamped": sum(bool(_STAMP.match(x)) for x in lines) / len(lines),
        "tsv": sum(x.count("\t") == 1 for x in lines) / len(lines),
        "plain": sum(bool(_PLAIN.match(x)) for x in lines) / len(lines),
    }
    best = max(share, key=share.get)  # in this order on a tie: a stamp also reads as "Name:"
    if share[best] >= 0.5:
        return best
    raise ValueError(
        f"{path}: cannot tell the chat format from its first {len(lines)} lines (e.g. "
        f"{lines[0][:60]!r}); pass --chat_format (one of {', '.join(FORMATS)})"
    )


def _speakers(options: dict) -> collections.Counter:
    """Turns per speaker; the first bad row is raised when there is no good one to count."""
    speakers, error = collections.Counter(), None
    for turn in turns(options):
        if isinstance(turn, Turn):
            speakers[turn.speaker] += 1
        else:
            error = error or turn
    if error and not speakers:  # nothing readable (malformed JSON, a wrong --chat_format): say why
        raise error
    return speakers


def _target(options: dict) -> str:
    """The target speaker, checked against those who speak in the log."""
    speakers, path, fmt = _speakers(options), options["chat_file"], options["chat_format"]
    found = ", ".join(f"{s!r} ({n})" for s, n in speakers.most_common(20)) or "none"
    found = f"speakers found (turns): {found}" + (", …" if len(speakers) > 20 else "")
    target = options.get("target_speaker") or ("B" if fmt == "tsv" else None)
    if target is None:
        raise ValueError(f"{path}: pass --target_speaker (whose style to learn); {found}")
    if target not in speakers:
        raise ValueError(
            f"{path}: --target_speaker={target!r} never speaks in this {fmt} log; {found}"
        )
    return target


def resolve(options: dict) -> dict:
    """Settles format, date order and target speaker, so both passes read the log the same way."""
    path = options.get("chat_file")
    if not path:
        raise ValueError("style_tuning: pass --chat_file (a chat log); this task has no default")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    options = {"context_turns": 6, "conversation_gap_hours": 6.0, **options}
    if options["context_turns"] < 1 or options["conversation_gap_hours"] <= 0:
        raise ValueError("style_tuning: context_turns must be >= 1, conversation_gap_hours > 0")
    given = options.get("chat_format") or "auto"
    fmt = detect_format(path) if given == "auto" else given
    if fmt not in FORMATS:
        raise ValueError(f"style_tuning: chat_format must be auto or one of {FORMATS}, got {fmt!r}")
    order = date_order(path) if fmt == "timestamped" else None
    options = {**options, "chat_format": fmt, "date_order": order}
    notes = [f"chat format: {fmt} ({'detected' if given == 'auto' else 'given'})"]
    notes += [f"dates read as {order}"] if order else []
    return {**options, "target_speaker": _target(options), "notes": notes}


def read(options: dict):
    """One row per target turn, with the turns before it; Drop for a turn that opens its talk."""
    target, conversation = options["target_speaker"], None
    history = collections.deque(maxlen=options["context_turns"])
    for turn in turns(options):
        if not isinstance(turn, Turn):
            yield turn  # a RowError
            continue
        if turn.conversation != conversation:
            history.clear()
            conversation = turn.conversation
        if turn.speaker == target and not history:
            yield Drop("first_turn")
        elif turn.speaker == target:
            context = [[t.speaker, t.text] for t in history]
            fields = {"context": context, "speaker": target, "reply": turn.text}
            yield Row(options["chat_file"], turn.line, fields, group=conversation)
        history.append(turn)


def render_prompt(context, speaker: str) -> str:
    lines = [TURN.format(speaker=s, text=t) for s, t in context]
    return "\n".join(lines) + PROMPT_END.format(target=speaker)


def _tail(tok, text: str, keep: int) -> str:
    """The last `keep` tokens of `text` as text (a cut inside a character is dropped)."""
    ids = tok.encode(text)
    return tok.decode(ids[len(ids) - keep :]).lstrip("\ufffd").lstrip() if keep > 0 else ""


def _fit_context(tok, context, speaker: str, budget: int) -> tuple[list[int], bool]:
    """Prompt ids within `budget`: the oldest turns go first, then the head of the last one."""
    for start in range(len(context)):
        ids = tok.encode(render_prompt(context[start:], speaker))
        if len(ids) <= budget:
            return ids, start > 0
    # The last turn alone is too long: keep its end, the words the reply answers.
    (name, text), keep = context[-1], len(tok.encode(context[-1][1]))
    while len(ids) > budget and keep > 0:
        keep -= len(ids) - budget  # re-encoding can shift a token, so check and repeat
        text = _tail(tok, text, keep)
        ids = tok.encode(render_prompt([(name, text)], speaker))
    if len(ids) > budget or not text:
        raise Drop("reply_too_long")
    return ids, True


def encode(row: Row, ctx: EncodeContext) -> Encoded:
    tok, fields = ctx.tokenizer, row.fields
    target = tok.encode(TARGET.format(reply=fields["reply"])) + [tok.eos_id]
    prompt, truncated = _fit_context(
        tok, fields["context"], fields["speaker"], ctx.seq_len - len(target)
    )
    return Encoded(prompt, target, truncated=truncated)


def prompt(fields: dict, ctx: EncodeContext) -> list[int]:
    """{"text": "A: hi\\nB: hello\\nA: how are you?", "speaker": "B"} -> B's reply prompt."""
    text = fields["text"].rstrip("\n")
    return ctx.tokenizer.encode(text + PROMPT_END.format(target=fields.get("speaker") or "B"))


def graph_prompt(fields: dict, tok, seq_len):
    """`prompt` in the graph (see `gpt2_tf.data.tasks.graph_prompt`)."""
    import tensorflow as tf

    from gpt2_tf.data.tasks import graph_prompt as gp

    text = tf.strings.regex_replace(gp.valid(fields["text"]), "\n+$", "")
    speaker = gp.valid(fields["speaker"])
    speaker = tf.where(speaker == "", "B", speaker)
    return tok.encode(tf.strings.join([text, gp.render(PROMPT_END, target=speaker)]))


def source(options: dict) -> dict:
    return {"paths": [options["chat_file"]]}


def min_seq_len(tok) -> int:
    """One one-token turn, the reply's frame, a one-token reply, <|endoftext|>."""
    turn = TURN.format(speaker="A", text="a") + PROMPT_END.format(target="B")
    return len(tok.encode(turn + TARGET.format(reply="a"))) + 1


TASK = TaskSpec(
    name="style_tuning",
    alias="chat",
    prep_flags=PREP_FLAGS,
    train_defaults=TRAIN_DEFAULTS,
    kind="lm",
    read=read,
    encode=encode,
    resolve=resolve,
    source=source,
    prompt=prompt,
    input_fields=("text", "speaker"),
    graph_prompt=graph_prompt,
    template=f"{TURN}\n{TURN}\n…{PROMPT_END}{TARGET}<|endoftext|>   (the last --context_turns "
    "turns, oldest first, then the --target_speaker)",
    seq_len=256,
    min_seq_len=min_seq_len,
    notes=(
        "loss on the target speaker's reply and its <|endoftext|> only",
        "a conversation stays in one split; a target turn that opens its conversation is dropped "
        "as first_turn (nothing to reply to)",
        "too long: the oldest context turns go first, then the head of the last one; dropped as "
        "reply_too_long only when the reply itself cannot fit",
    ),
)
