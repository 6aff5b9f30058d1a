"""The files a run or an analysis writes for people and scripts: JSON, JSON lines, CSV and
Markdown tables, all written one way.

JSON has no NaN or infinity: they become null (an empty cell in a CSV), so every file parses with
any JSON reader. NumPy scalars become Python numbers; anything else JSON cannot hold is written
as its `str`.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np


def jsonable(obj):
    """`obj` with NaN and infinity as None, NumPy scalars as Python numbers, tuples as lists."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(jsonable(obj), f, indent=2, ensure_ascii=False, default=str)


def write_jsonl(path: str, rows: list[dict]) -> None:
    """One JSON object a line."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(jsonable(r), ensure_ascii=False, default=str) + "\n" for r in rows)


def write_csv(path: str, rows: list[dict], fields: list[str] | None = None) -> None:
    """A header (`fields`, default the first row's keys), then a line per row; a key a row lacks
    and NaN are empty cells."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields or rows[0]), restval="")
        writer.writeheader()
        writer.writerows(jsonable(rows))


# ---- Markdown ------------------------------------------------------------------------------------
def shorten(text: str, limit: int, keep: str = "head") -> str:
    """At most `limit` characters, "…" where it was cut: its start kept, or its end (`"tail"`)."""
    if len(text) <= limit:
        return text
    return "…" + text[1 - limit :] if keep == "tail" else text[: limit - 1] + "…"


def number(value: float) -> str:
    """4 significant digits; n/a for NaN and infinity."""
    return f"{value:.4g}" if math.isfinite(value) else "n/a"


class Cell(str):
    """Text already made into a table cell (by `md_cell`): written as it is."""


def md_cell(value, limit: int = 400, keep: str = "head") -> Cell:
    """A value as one Markdown table cell: floats to 4 significant digits, text on one line with
    `|` escaped and at most `limit` characters (see `shorten`), None as a dash. A cell made
    already (e.g. narrower than `md_table` makes it) stays as it is."""
    if isinstance(value, Cell):
        return value
    if value is None:
        return Cell("–")
    if isinstance(value, float | np.floating):
        return Cell(number(float(value)))
    text = shorten(str(value), limit, keep)
    return Cell(text.replace("|", "\\|").replace("\n", "<br>") or "(empty)")


def md_table(header: list[str], rows: list[list], align: str = "") -> str:
    """A Markdown table of `md_cell`s; `align` has a letter per column, `r` right-aligning it
    (numbers), any other (or none) leaving it as it is."""
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in align.ljust(len(header)))
    lines = ["| " + " | ".join(header) + " |", rule]
    return "\n".join(lines + ["| " + " | ".join(md_cell(v) for v in row) + " |" for row in rows])
