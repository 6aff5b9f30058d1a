"""text_tuning: continued training on a plain corpus (.txt, .jsonl, .json), packed into blocks.

A document is a whole `.txt` file (or, with `txt_split_blank_lines`, each block of it between
blank lines: lyrics files often hold several songs), one `.jsonl` line's `text_field`, or each
object of a `.json` file with a list of strings under "paragraphs" or "content" (the
chinese-poetry layouts), its "title" or "chapter" line first. Each document becomes its ids and
`<|endoftext|>`; the engine packs them into full `seq_len` blocks, so the loss covers every token.
"""

from __future__ import annotations

import bisect
import json
import json.scanner
import re
from collections.abc import Iterator

from gpt2_tf.data.readers import Row, RowError, files_in, iter_jsonl, iter_lines, require
from gpt2_tf.data.tasks import EncodeContext, Encoded, Flag, TaskSpec

SUFFIXES = (".txt", ".jsonl", ".json")
PREP_FLAGS = (
    Flag(
        "text_files",
        None,
        "Files or folders (their .txt/.jsonl/.json files, sorted), comma-separated.",
        "list",
        required=True,
        input=True,
    ),
    Flag("text_field", "text", "The document's field in .jsonl files."),
    Flag(
        "txt_split_blank_lines",
        False,
        "In .txt files, each block between blank lines is a document (a lyrics file holding "
        "several songs); else the whole file is one.",
        "boolean",
    ),
    Flag(
        "subsample",
        1.0,
        "Keep this fraction of the documents (whole documents, seeded by --seed).",
        "float",
        prep_option=True,
    ),
    Flag(
        "num_stages",
        1,
        "Split the train documents into this many stages (train-stage1..N files).",
        "integer",
        prep_option=True,
    ),
)
TRAIN_DEFAULTS = {"batch_size": 8, "learning_rate": 5e-4}  # also staged fine-tuning's
BODY_KEYS, TITLE_KEYS = ("paragraphs", "content"), ("title", "chapter")


def text_files(options: dict) -> list[str]:
    """--text_files (files or folders, in the order given; a folder's files sorted)."""
    paths = options.get("text_files") or []
    if not paths:
        raise ValueError(
            f"text_tuning: --text_files is required (files or folders of {'/'.join(SUFFIXES)})"
        )
    found = [f for p in paths for f in files_in(p, SUFFIXES)]
    unknown = [f for f in found if not f.endswith(SUFFIXES)]
    if unknown:
        raise ValueError(f"text_tuning: {unknown[0]}: not a {'/'.join(SUFFIXES)} file")
    return found


# --- .txt ---------------------------------------------------------------------------------------


def _is_blank(item) -> bool:
    return not isinstance(item, RowError) and not item[1].strip()


def _txt_document(path: str, items: list) -> Row | RowError:
    """One document from its lines; a line that is not UTF-8 spoils the whole document."""
    bad = [x for x in items if isinstance(x, RowError)]
    if bad:
        return bad[0]
    while items and _is_blank(items[-1]):
        items.pop()
    while items and _is_blank(items[0]):
        items.pop(0)
    if not items:
        return RowError(path, 1, None, "empty_field", "empty document")
    return Row(path, items[0][0], {"text": "\n".join(text for _, text in items)})


def _txt_documents(path: str, split_blank_lines: bool) -> Iterator[Row | RowError]:
    items = []  # (line number, text) or RowError of the current document
    for item in iter_lines(path):
        if split_blank_lines and _is_blank(item):
            if items:
                yield _txt_document(path, items)
            items = []
        else:
            items.append(item)
    if items or not split_blank_lines:  # an empty file is one empty document
        yield _txt_document(path, items)


# --- .jsonl -------------------------------------------------------------------------------------


def _jsonl_documents(path: str, field: str) -> Iterator[Row | RowError]:
    for item in iter_jsonl(path):
        try:
            if isinstance(item, RowError):
                raise item
            yield Row(path, item.line, {"text": require(item, field)})
        except RowError as e:
            yield e


# --- .json --------------------------------------------------------------------------------------


class _Located(dict):
    offset = 0  # where the object's "{" is in the text


class _LocatingDecoder(json.JSONDecoder):
    """json.loads that records each object's offset, so a document can name its line."""

    def __init__(self):
        super().__init__(object_pairs_hook=_Located)
        parse_object = self.parse_object

        def locate(s_and_end, *args):
            obj, end = parse_object(s_and_end, *args)
            obj.offset = s_and_end[1] - 1
            return obj, end

        self.parse_object = locate
        self.scan_once = json.scanner.py_make_scanner(self)  # the C scanner ignores parse_object


def _is_strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(x, str) for x in value)


def _document_nodes(node) -> Iterator[tuple[str, _Located]]:
    """(body key, object) of each object holding a list of strings, depth first, in file order."""
    if isinstance(node, dict):
        key = next((k for k in BODY_KEYS if _is_strings(node.get(k))), None)
        if key:
            yield key, node
            return
        node = list(node.values())
    if isinstance(node, list):
        for child in node:
            yield from _document_nodes(child)


def _objects_with_strings(node) -> int:
    """Objects holding a list of strings under any key: the documents a file would have given
    under the expected keys."""
    if isinstance(node, dict):
        if any(_is_strings(v) and v for v in node.values()):
            return 1
        node = list(node.values())
    return sum(_objects_with_strings(c) for c in node) if isinstance(node, list) else 0


def _json_document(path: str, line: int, key: str, node: dict) -> Row | RowError:
    body = node[key]
    if not "".join(body).strip():
        return RowError(path, line, key, "empty_field", "empty document")
    title = next((node[k] for k in TITLE_KEYS if isinstance(node.get(k), str)), "")
    lines = ([title] if title.strip() else []) + body
    return Row(path, line, {"text": "\n".join(lines)})


def _json_documents(path: str) -> Iterator[Row | RowError]:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        yield RowError(path, line, None, "not_utf8", f"not UTF-8 ({e.reason} at byte {e.start})")
        return
    try:
        obj = _LocatingDecoder().decode(text)
    except json.JSONDecodeError as e:
        # What the file held is lost: count its documents, a body key opening a list of strings.
        body = rf'"(?:{"|".join(BODY_KEYS)})"\s*:\s*\[\s*"'
        held = max(len(re.findall(body, text)), 1)
        detail = f"not valid JSON ({e.msg}, column {e.colno}); its {held} document(s) lost"
        yield RowError(path, e.lineno, None, "malformed_json", detail, rows=held)
        return
    newlines = [m.start() for m in re.finditer("\n", text)]
    found = False
    for key, node in _document_nodes(obj):
        found = True
        yield _json_document(path, bisect.bisect_right(newlines, node.offset) + 1, key, node)
    if not found:  # read, listed in metadata with its sha256, and yet no text: say so
        keys = " or ".join(repr(k) for k in BODY_KEYS)
        held = max(_objects_with_strings(obj), 1)
        detail = (
            f"no object holds a list of strings under {keys} (the keys text_tuning reads); "
            f"{held} object(s) with text under other keys"
        )
        yield RowError(path, 1, None, "no_documents", detail, rows=held)


# --- the task -----------------------------------------------------------------------------------


def _file_documents(path: str, options: dict) -> Iterator[Row | RowError]:
    if path.endswith(".txt"):
        return _txt_documents(path, bool(options.get("txt_split_blank_lines")))
    if path.endswith(".jsonl"):
        return _jsonl_documents(path, options.get("text_field") or "text")
    return _json_documents(path)


def read(options: dict) -> Iterator[Row | RowError]:
    """Each document of each file, in order: a Row of {"text"} (group = its index), or an error."""
    index = 0
    for path in text_files(options):
        for item in _file_documents(path, options):
            if isinstance(item, Row):
                item.group = index  # a document is never cut across splits
            yield item
            index += 1


def encode(row: Row, ctx: EncodeContext) -> Encoded:
    tok = ctx.tokenizer
    return Encoded(prompt_ids=[], target_ids=tok.encode(row.fields["text"]) + [tok.eos_id])


def prompt(fields: dict, ctx: EncodeContext) -> list[int]:
    return ctx.tokenizer.encode(fields["text"])  # continue the text as it stands


def graph_prompt(fields: dict, tok, seq_len):
    """`prompt` in the graph: the text's ids, to be continued."""
    return tok.encode(fields["text"])


def source(options: dict) -> dict:
    return {"paths": text_files(options)}


TASK = TaskSpec(
    name="text_tuning",
    alias="text",
    prep_flags=PREP_FLAGS,
    train_defaults=TRAIN_DEFAULTS,
    kind="lm",
    read=read,
    encode=encode,
    source=source,
    prompt=prompt,
    input_fields=("text",),
    graph_prompt=graph_prompt,
    template="{text}<|endoftext|>{next document}...  (packed, cut into seq_len blocks)",
    pack=True,
    seq_len=256,
    notes=(
        "documents are packed: a block crosses document boundaries, which are marked by "
        "<|endoftext|>; only a split's last block is shorter than seq_len (padded)",
        "the loss covers every token (prompt_length 0); source_index is the document that "
        "starts the block",
        "documents: a .txt file (or its blank-line-separated blocks with txt_split_blank_lines),"
        " a .jsonl line's text_field, a .json object's title/chapter line + paragraphs/content",
    ),
)
