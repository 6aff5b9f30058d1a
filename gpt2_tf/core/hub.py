"""Where files come from: a local folder first, then the Hugging Face cache, then the hub.

Every loader in gpt2_tf takes a local path. A hub id (`gpt2`, `openai-community/gpt2`) is
downloaded only when the hub answers; offline it fails at once, saying how to pass a folder.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Sequence

HUB_HOST = "huggingface.co"
# `gpt2`, `openai-community/gpt2`: a name or owner/name, no leading dot or slash.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


class OfflineError(OSError):
    """A hub id was given but the hub cannot be reached and nothing is cached."""


def hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """(True, "") when the hub answers a TCP connection; else (False, why)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False, "HF_HUB_OFFLINE is set"
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True, ""
    except OSError as e:
        return False, f"{HUB_HOST} is unreachable ({e.__class__.__name__}: {e})"


def resolve(path_or_id: str, allow_patterns: Sequence[str], what: str) -> str:
    """Returns a local folder holding `what` for a path or a Hugging Face hub id.

    `allow_patterns` limits the download to the files the caller reads (e.g. `*.json`).
    """
    if os.path.isdir(path_or_id):
        return path_or_id
    if os.path.exists(path_or_id):
        return os.path.dirname(os.path.abspath(path_or_id))
    if not HUB_ID.fullmatch(path_or_id):
        raise FileNotFoundError(f"{what}: no such file or folder {path_or_id!r}")
    from huggingface_hub import snapshot_download

    try:  # a copy in the local Hugging Face cache needs no network
        return snapshot_download(
            path_or_id, allow_patterns=list(allow_patterns), local_files_only=True
        )
    except Exception:  # noqa: BLE001 - any miss falls through to the online route
        pass
    ok, why = hub_reachable()
    if not ok:
        raise OfflineError(
            f"{what}: {path_or_id!r} is not a local folder and the Hugging Face hub cannot be "
            f"reached ({why}). Pass a local folder instead, e.g. one holding "
            f"{', '.join(allow_patterns)} (download it on a machine with internet with "
            f"`huggingface-cli download {path_or_id}`)."
        )
    return snapshot_download(path_or_id, allow_patterns=list(allow_patterns))


def dataset_file(repo_id: str, filename: str, what: str) -> str:
    """A file of a Hugging Face hub dataset: from the local cache, else downloaded when online."""
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id, filename, repo_type="dataset", local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached: try the network below
        pass
    ok, why = hub_reachable()
    if not ok:
        raise OfflineError(
            f"{what}: the hub dataset {repo_id!r} is not cached and the hub cannot "
            f"be reached ({why}). Pass a local file instead."
        )
    return hf_hub_download(repo_id, filename, repo_type="dataset")
