"""The prep engine shared by every task: raw rows -> tokens -> split -> padded TFRecord shards.

Two passes over the source: the first lists the split groups (a row, a word, a conversation, a
document) so the seeded split is exact (80/10/10 of the groups, like `train_test_split`); the
second encodes and streams examples into shards, so a corpus larger than memory works. Every row
read is either written or dropped, by reason, and `metadata.json` says so.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import hashlib
import json
import os
import shutil

import numpy as np
from tqdm import tqdm

from gpt2_tf import __version__
from gpt2_tf.core.locking import FolderLock
from gpt2_tf.data.readers import RowError
from gpt2_tf.data.records import CLASSIFIER, METADATA, ShardedWriter, serialize, split_examples
from gpt2_tf.data.tasks import Drop, EncodeContext, TaskSpec


@dataclasses.dataclass
class PrepOptions:
    output_dir: str
    seq_len: int
    seed: int = 0
    num_shards: int = 1
    on_error: str = "raise"  # or "skip"
    overwrite: bool = False
    subsample: float = 1.0  # keep this fraction of the split groups (whole rows/documents)
    num_stages: int = 1  # split train into N stages (staged fine-tuning)
    task: dict = dataclasses.field(default_factory=dict)  # the task's own options


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tokenizer_files(folder) -> dict[str, str]:
    """sha256 of each tokenizer file in the folder it was read from."""
    from gpt2_tf.tokenizer.bpe import HF_FILES, OPENAI_FILES, TOKENIZER_JSON

    names = [*OPENAI_FILES, *HF_FILES, TOKENIZER_JSON]
    paths = [os.path.join(folder or "", n) for n in names]
    return {os.path.basename(p): file_sha256(p) for p in paths if folder and os.path.exists(p)}


def _is_prep_file(name: str) -> bool:
    return name.endswith(".tfrecord") or name == METADATA


def _check_target(folder: str, overwrite: bool) -> None:
    old = [n for n in os.listdir(folder) if _is_prep_file(n)] if os.path.isdir(folder) else []
    if old and not overwrite:
        raise FileExistsError(
            f"{folder} already holds prepared data ({len(old)} files); "
            "pass --overwrite to replace it"
        )


def _swappable(folder: str) -> bool:
    """Whether the prep can be written beside `folder` and swapped in: its parent is writable
    and it is no mount point. Else it is written inside and moved in file by file."""
    real = os.path.realpath(folder)
    return os.access(os.path.dirname(real), os.W_OK) and not os.path.ismount(real)


def _staging(folder: str, kind: str, swap: bool, pid: int | str) -> str:
    """Where a prep of `folder` is written (`kind` "prep") or old data waits (`kind` "old"):
    a hidden sibling `.<name>.<kind>-<pid>`, or `<folder>/.<kind>-<pid>` when not swapped."""
    real = os.path.realpath(folder)
    if not swap:
        return os.path.join(real, f".{kind}-{pid}")
    parent, name = os.path.split(real)
    return os.path.join(parent, f".{name}.{kind}-{pid}")


def _recover(folder: str, swap: bool) -> None:
    """Clears what an earlier prep of `folder` left when it was killed (the lock is held, so no
    prep of it runs now): its staging folder goes; old data set aside by a swap that did not
    finish goes back in place, or is removed if the new data made it."""
    for staging in _leftovers(folder, "prep", swap):
        shutil.rmtree(staging, ignore_errors=True)
    for old in _leftovers(folder, "old", swap):
        if os.path.isdir(folder):
            _move_others(old, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(old, folder)


def _leftovers(folder: str, kind: str, swap: bool) -> list[str]:
    head, tail = os.path.split(_staging(folder, kind, swap, "PID"))
    return glob.glob(os.path.join(glob.escape(head), glob.escape(tail).replace("PID", "*")))


def _move_others(source: str, target: str) -> None:
    """Moves the files that are not a prep's (a user's notes) from `source` to `target`."""
    for name in os.listdir(source):
        if not _is_prep_file(name) and not os.path.exists(os.path.join(target, name)):
            os.rename(os.path.join(source, name), os.path.join(target, name))


def _commit(staging: str, folder: str, swap: bool) -> None:
    """Puts the finished prep in `staging` (metadata written last) in place of `folder`.

    Swapped: two renames on one file system, so at any moment `folder` holds the old prep, the
    new one, or (killed between the two) nothing, and `_recover` puts the old one back. In
    place (a mount point, a read-only parent): the old metadata goes first, so the folder holds
    no prep until the new metadata arrives last."""
    real = os.path.realpath(folder)
    if not os.path.isdir(real):
        os.makedirs(os.path.dirname(real), exist_ok=True)
        os.rename(staging, real)
    elif swap:
        old = _staging(folder, "old", swap, os.getpid())
        os.rename(real, old)
        os.rename(staging, real)
        _move_others(old, real)
        shutil.rmtree(old)
    else:
        old = [n for n in os.listdir(real) if _is_prep_file(n) and n != METADATA]
        for name in [METADATA, *old] if os.path.exists(os.path.join(real, METADATA)) else old:
            os.remove(os.path.join(real, name))
        for name in [*sorted(n for n in os.listdir(staging) if n != METADATA), METADATA]:
            os.rename(os.path.join(staging, name), os.path.join(real, name))
        os.rmdir(staging)


def _assign_splits(spec: TaskSpec, opts: PrepOptions, groups: list) -> dict:
    """group -> split name, from a seeded permutation; None for groups left out by --subsample."""
    order = np.random.default_rng(opts.seed).permutation(len(groups))
    keep = round(len(groups) * opts.subsample)
    kept = [groups[i] for i in order[:keep]]
    names, fractions = zip(*spec.fractions)
    sizes = [round(len(kept) * f) for f in fractions[1:]]
    sizes.insert(0, len(kept) - sum(sizes))  # the first split (train) takes the rounding
    assignment, start = {g: None for g in groups}, 0
    for name, size in zip(names, sizes):
        for g in kept[start : start + size]:
            assignment[g] = name
        start += size
    train = [g for g in kept if assignment[g] == "train"]
    if opts.num_stages > 1:
        for i, g in enumerate(train):
            assignment[g] = f"train-stage{i * opts.num_stages // len(train) + 1}"
    return assignment


def _first_pass(spec: TaskSpec, opts: PrepOptions) -> tuple[int, dict]:
    count, groups, files = 0, {}, collections.Counter()
    for index, item in enumerate(spec.read(opts.task)):
        count += 1
        files[getattr(item, "file", None)] += 1
        if not isinstance(item, RowError | Drop) and item.split is None:
            groups.setdefault(item.group if item.group is not None else index, None)
    _check_no_empty_files(spec, opts, files, count)
    return count, _assign_splits(spec, opts, list(groups))


def _check_no_empty_files(spec: TaskSpec, opts: PrepOptions, files, count: int) -> None:
    """An input file with no rows (empty, or a header alone) is an error naming it: it would
    leave a split empty, found only when training starts."""
    paths = spec.source(opts.task).get("paths", [])
    if len(paths) == 1:  # one file: every item is its own, whatever `file` a reader gives it
        empty = paths if count == 0 else []
    else:
        empty = [p for p in paths if not files[p]]
    if empty:
        raise ValueError(f"{empty[0]}: no rows (the file is empty or holds only its header)")


def _check_training_examples(spec: TaskSpec, stats: _Stats, split_counts: dict) -> None:
    """Every row dropped (too long for --seq_len, all bad under --on_error=skip): an error
    now, with the reasons, rather than a prep that training cannot use."""
    if split_examples({"splits": split_counts}, "train"):
        return
    reasons = ", ".join(f"{k} {v}" for k, v in stats.dropped.most_common()) or "none"
    raise ValueError(
        f"{spec.name}: no training examples: {stats.read} rows read, {stats.written} written, "
        f"dropped by reason: {reasons}"
    )


class _Stats:
    def __init__(self):
        self.read = self.written = self.truncated = 0
        self.dropped = collections.Counter()
        self.class_counts = collections.defaultdict(collections.Counter)

    def drop(self, reason: str, rows: int = 1) -> None:
        self.dropped[reason] += rows


def _padded(ids: list[int], seq_len: int, pad_id: int) -> list[int]:
    return ids + [pad_id] * (seq_len - len(ids))


class _Packer:
    """Joins documents (each ending in <|endoftext|>) and cuts full `seq_len` blocks per split."""

    def __init__(self, writer: ShardedWriter, seq_len: int, pad_id: int):
        self.writer, self.seq_len, self.pad_id = writer, seq_len, pad_id
        self.buffers = collections.defaultdict(list)  # split -> [(token, source_index)]

    def add(self, split: str, ids: list[int], source_index: int) -> None:
        buf = self.buffers[split]
        buf.extend((t, source_index) for t in ids)
        full = len(buf) - len(buf) % self.seq_len  # cut all full blocks at once: linear time
        for start in range(0, full, self.seq_len):
            self._emit(split, buf[start : start + self.seq_len])
        del buf[:full]

    def _emit(self, split, block):
        ids = [t for t, _ in block]
        record = serialize(_padded(ids, self.seq_len, self.pad_id), len(ids), block[0][1], 0)
        self.writer.write(split, record, len(ids))

    def flush(self) -> None:
        for split, buf in self.buffers.items():
            if buf:
                self._emit(split, buf)
        self.buffers.clear()


def _write_example(writer, spec, split, enc, index, seq_len, pad_id, stats) -> None:
    if spec.kind == CLASSIFIER:
        ids = enc.prompt_ids
        writer.write(
            split,
            serialize(_padded(ids, seq_len, pad_id), len(ids), index, label=enc.label),
            len(ids),
        )
        stats.class_counts[split][spec.label_names[enc.label]] += 1
    else:
        ids = enc.prompt_ids + enc.target_ids
        record = serialize(_padded(ids, seq_len, pad_id), len(ids), index, len(enc.prompt_ids))
        writer.write(split, record, len(ids))


def _check_length(enc, seq_len: int, row) -> None:
    n = len(enc.prompt_ids) + len(enc.target_ids)
    if n > seq_len:  # a task's encoder must fit its examples; this guards the contract
        raise AssertionError(
            f"{row.file}: line {row.line}: encoder produced {n} > {seq_len} tokens"
        )


def _second_pass(spec, opts, tokenizer, assignment, total, writer) -> _Stats:
    stats, ctx = _Stats(), EncodeContext(tokenizer, opts.seq_len, opts.task)
    packer = _Packer(writer, opts.seq_len, tokenizer.eos_id) if spec.pack else None
    for index, item in enumerate(
        tqdm(
            spec.read(opts.task), total=total, desc=f"prep {spec.name}", unit="row", mininterval=2.0
        )
    ):
        stats.read += 1
        try:
            if isinstance(item, RowError | Drop):  # a reader's bad row, or a row it filtered out
                raise item
            split = item.split or assignment[item.group if item.group is not None else index]
            if split is None:
                stats.drop("subsample")
                continue
            enc = spec.encode(item, ctx)
        except RowError as e:
            if opts.on_error != "skip":
                raise
            stats.read += e.rows - 1  # a whole file's rows, lost at once, were read as one
            stats.drop(e.reason, e.rows)
            continue
        except Drop as d:
            stats.drop(d.reason)
            continue
        stats.written += 1
        stats.truncated += enc.truncated
        if packer:
            packer.add(split, enc.prompt_ids + enc.target_ids, index)
        else:
            _check_length(enc, opts.seq_len, item)
            _write_example(writer, spec, split, enc, index, opts.seq_len, tokenizer.eos_id, stats)
    if packer:
        packer.flush()
    return stats


def _source_metadata(spec: TaskSpec, opts: PrepOptions) -> dict:
    source = spec.source(opts.task)
    if "paths" in source:
        source["files"] = [{"path": p, "sha256": file_sha256(p)} for p in source.pop("paths")]
    return source


def prepare(spec: TaskSpec, tokenizer, opts: PrepOptions) -> dict:
    """Runs the prep of `spec` into `opts.output_dir`; returns the metadata it wrote."""
    if opts.on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {opts.on_error!r}")
    if not 0 < opts.subsample <= 1:
        raise ValueError(f"subsample must be in (0, 1], got {opts.subsample}")
    least = spec.min_seq_len(tokenizer)
    if opts.seq_len < least:
        raise ValueError(
            f"--seq_len {opts.seq_len} is too small for {spec.name}: its template with one "
            f"token of each field and <|endoftext|> takes {least} tokens; use at least {least} "
            f"(the task's default is {spec.seq_len})"
        )
    opts = dataclasses.replace(opts, task=spec.resolve(dict(opts.task)))  # may fail offline
    # Locked, and written beside the folder until complete: a second prep into the same folder
    # fails at once, and a failed or killed prep leaves the previous data as it was.
    swap = _swappable(opts.output_dir)
    if not swap:
        os.makedirs(opts.output_dir, exist_ok=True)
    with FolderLock(opts.output_dir, f"prep {spec.name}", inside=not swap):
        _recover(opts.output_dir, swap)
        _check_target(opts.output_dir, opts.overwrite)
        staging = _staging(opts.output_dir, "prep", swap, os.getpid())
        os.makedirs(staging)
        try:
            total, assignment = _first_pass(spec, opts)
            with ShardedWriter(staging, opts.num_shards) as writer:
                stats = _second_pass(spec, opts, tokenizer, assignment, total, writer)
            _check_training_examples(spec, stats, writer.counts)
            meta = _metadata(spec, opts, tokenizer, stats, writer.counts)
            with open(os.path.join(staging, METADATA), "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=2, ensure_ascii=False)
            _commit(staging, opts.output_dir, swap)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone already once committed
    print(summary(meta))
    return meta


def _metadata(spec, opts, tokenizer, stats, split_counts) -> dict:
    meta = {
        "task": spec.name,
        "kind": spec.kind,
        "gpt2_tf_version": __version__,
        "source": _source_metadata(spec, opts),
        "tokenizer": {
            "source": tokenizer.source,
            "sha256": tokenizer.fingerprint,  # of the contents: same for any layout
            "files": _tokenizer_files(tokenizer.source),
            "vocab_size": tokenizer.vocab_size,
        },
        "seq_len": opts.seq_len,
        "pad_id": tokenizer.eos_id,
        "eos_id": tokenizer.eos_id,
        "template": spec.template,
        "packed": spec.pack,
        "notes": [*spec.notes, *opts.task.get("notes", ())],
        "splits": dict(sorted(split_counts.items())),
        "rows": {
            "read": stats.read,
            "written": stats.written,
            "dropped": dict(sorted(stats.dropped.items())),
        },
        "truncated": stats.truncated,
        "seed": opts.seed,
        "subsample": opts.subsample,
        "num_stages": opts.num_stages,
        "on_error": opts.on_error,
        "options": opts.task,
    }
    if spec.kind == CLASSIFIER:
        meta["label_names"] = list(spec.label_names)
        meta["class_counts"] = {
            s: {n: c[n] for n in spec.label_names} for s, c in sorted(stats.class_counts.items())
        }
    return meta


def summary(meta: dict) -> str:
    rows = meta["rows"]
    dropped = ", ".join(f"{k} {v}" for k, v in rows["dropped"].items()) or "none"
    splits = ", ".join(
        f"{s} {c['examples']} ({c['tokens']} tokens)" for s, c in meta["splits"].items()
    )
    return (
        f"{meta['task']}: rows read {rows['read']} = written {rows['written']} + dropped "
        f"{sum(rows['dropped'].values())} ({dropped}); truncated {meta['truncated']}\n"
        f"  examples: {splits}"
    )


def find_row(spec: TaskSpec, task_options: dict, source_index: int):
    """The raw row (file, line, fields) behind an example's `source_index`.

    `source_index` counts the items the task's reader yields, in order, over all its files (bad
    and filtered rows included), so it is stable whatever --on_error or --categories say.
    """
    for index, item in enumerate(spec.read(spec.resolve(dict(task_options)))):
        if index == source_index:
            return item
    raise IndexError(f"{spec.name}: source_index {source_index} is past the end of the source")
