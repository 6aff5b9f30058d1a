"""An exclusive lock on an output folder, so two preps or two runs never write into one.

The lock is `fcntl.flock` on a file beside the folder (`<parent>/.<name>.lock`: beside it, since
a prep replaces the folder whole) or, for a training run's folder, inside it. The kernel drops
the lock when its process ends, however it ends, so a lock left by a killed process is free
again; its holder's record (pid, host, start, command) stays in the file, and the next taker says
that it took it over. A second taker while the holder lives fails at once, naming the holder.
Locks are reentrant within a process: the pipeline's flag handling and the trainer it calls
share one.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import threading

from absl import logging

try:
    import fcntl
except ImportError:  # not POSIX: no locking (said once, below)
    fcntl = None

_held: dict[str, list] = {}  # lock path -> [open file, count] in this process
_guard = threading.Lock()


class FolderInUse(RuntimeError):
    """Another live process holds the folder's lock."""


def lock_path(folder: str, inside: bool = False) -> str:
    """`<parent>/.<name>.lock`, or `<folder>/.lock` for a folder that is never replaced whole
    (a training run's: its parent may not be writable, e.g. a container's /output). Links are
    resolved, so a link and its target share one lock."""
    folder = os.path.realpath(folder)
    if inside:
        return os.path.join(folder, ".lock")
    parent, name = os.path.split(folder)
    return os.path.join(parent, f".{name}.lock")


class FolderLock:
    """`with FolderLock(folder, "training"):` holds the lock for the block (or `acquire()` and
    `release()`); `what` is said to a second taker; `inside` places the lock file in the
    folder (see `lock_path`)."""

    def __init__(self, folder: str, what: str, inside: bool = False):
        self.folder, self.what, self.path = folder, what, lock_path(folder, inside)
        self.took_over: dict | None = None  # the record of a dead holder, when one was found

    def acquire(self) -> FolderLock:
        with _guard:
            if self.path in _held:
                _held[self.path][1] += 1
                return self
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release
            if fcntl is None:
                logging.warning("no file locking on this system: %s is not locked", self.folder)
            else:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    holder = _read(f)
                    f.close()
                    raise FolderInUse(
                        f"{self.folder} is in use by {_describe(holder)}; wait for it to end or "
                        f"choose another folder (lock file {self.path})"
                    ) from None
            self.took_over = _read(f) or None  # a record left: its holder died holding it
            if self.took_over:
                logging.warning(
                    "%s: took over the lock of %s, which is no longer running",
                    self.folder,
                    _describe(self.took_over),
                )
            _write(f, _record(self.what))
            _held[self.path] = [f, 1]
        return self

    def release(self) -> None:
        with _guard:
            entry = _held.get(self.path)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] == 0:
                f = _held.pop(self.path)[0]
                _write(f, None)  # an empty file: released cleanly
                f.close()  # drops the flock

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _record(what: str) -> dict:
    return {
        "what": what,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv)[:300],
    }


def _describe(record: dict | None) -> str:
    if not record:
        return "another process (no record of it)"
    return (
        f"{record.get('what', 'a process')}: pid {record.get('pid')} on {record.get('host')}, "
        f"started {record.get('started')} ({record.get('command')})"
    )


def _read(f) -> dict:
    f.seek(0)
    text = f.read().strip()
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {"command": text[:200]}


def _write(f, record: dict | None) -> None:
    f.seek(0)
    f.truncate()
    if record:
        f.write(json.dumps(record))
    f.flush()
