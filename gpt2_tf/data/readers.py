"""Raw-data readers: rows with their file and line, and errors that name file, line and field.

A reader yields `Row`s and, for a row it cannot read, a `RowError` (it does not raise, so one bad
line does not end the stream); the prep engine then stops or skips and counts, per `--on_error`.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import json
import os
from collections.abc import Iterator

# A line is read whole before it is split, so no field limit is needed; the csv module's
# default (131,072 characters) failed a 1 MB RTE field with no file or line.
csv.field_size_limit(2**31 - 1)


@dataclasses.dataclass
class Row:
    file: str
    line: int  # 1-based line number in `file` (first line of the row)
    fields: dict
    split: str | None = None  # set when the source itself is split (emotion files, RTE dev)
    group: str | None = None  # rows of one group stay in one split (a word, a conversation)


class RowError(ValueError):
    """A row that cannot be used; `reason` is the key it is counted under when skipped. `rows`
    is how many rows it loses: more than one where a whole file fails (a JSON file that does not
    parse loses every document it held)."""

    def __init__(
        self, file: str, line: int, field: str | None, reason: str, detail: str, rows: int = 1
    ):
        self.file, self.line, self.field, self.reason, self.detail = (
            file,
            line,
            field,
            reason,
            detail,
        )
        self.rows = rows
        where = f"{file}: line {line}" + (f": field {field!r}" if field else "")
        super().__init__(f"{where}: {detail}")


def iter_lines(path: str) -> Iterator[tuple[int, str] | RowError]:
    """(line number, text) of each line as UTF-8, or a RowError for a line that is not."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):  # Windows editors write one
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                yield lineno, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                yield RowError(
                    path, lineno, None, "not_utf8", f"not UTF-8 ({e.reason} at byte {e.start})"
                )


def iter_jsonl(path: str, split: str | None = None) -> Iterator[Row | RowError]:
    for item in iter_lines(path):
        if isinstance(item, RowError):
            yield item
            continue
        lineno, text = item
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            yield RowError(
                path, lineno, None, "malformed_json", f"not valid JSON ({e.msg}, column {e.colno})"
            )
            continue
        if not isinstance(obj, dict):
            yield RowError(
                path,
                lineno,
                None,
                "malformed_json",
                f"expected a JSON object, got {type(obj).__name__}",
            )
            continue
        yield Row(path, lineno, obj, split)


def iter_delimited(
    path: str, delimiter: str, fieldnames=None, split=None
) -> Iterator[Row | RowError]:
    """CSV/TSV rows (header line unless `fieldnames`); quoting off for TSV, as GLUE writes it."""
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    lines = iter_lines(path)
    header = fieldnames
    for item in lines:
        if isinstance(item, RowError):
            yield item
            continue
        lineno, text = item
        if not text.strip():
            continue
        try:
            values = next(csv.reader([text], delimiter=delimiter, quoting=quoting))
        except csv.Error as e:
            yield RowError(path, lineno, None, "malformed_csv", f"not a valid row ({e})")
            continue
        if header is None:
            header = values
            continue
        if len(values) != len(header):
            yield RowError(
                path,
                lineno,
                None,
                "wrong_column_count",
                f"{len(values)} columns, the header has {len(header)} ({header})",
            )
            continue
        yield Row(path, lineno, dict(zip(header, values)), split)


def require(row: Row, field: str, allow_empty: bool = False) -> str:
    """The field's text; a RowError when it is missing, not text, or empty."""
    if field not in row.fields or row.fields[field] is None:
        raise RowError(row.file, row.line, field, "missing_field", "required field is missing")
    value = row.fields[field]
    if not isinstance(value, str):
        raise RowError(
            row.file, row.line, field, "bad_field", f"expected text, got {type(value).__name__}"
        )
    if not allow_empty and not value.strip():
        raise RowError(row.file, row.line, field, "empty_field", "required field is empty")
    return value


def files_in(path: str, suffixes: tuple[str, ...]) -> list[str]:
    """A file, or the files of a folder with one of `suffixes`, sorted (so runs are repeatable)."""
    if os.path.isdir(path):
        found = sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(suffixes))
        if not found:
            raise FileNotFoundError(f"{path}: no {'/'.join(suffixes)} files in this folder")
        return found
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or folder")
    return [path]
