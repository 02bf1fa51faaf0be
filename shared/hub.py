"""Models by Hugging Face hub id: `--model-path ORG/NAME` resolved to a local snapshot directory.

Resolution goes through `huggingface_hub.snapshot_download`, so the standard cache layout
(`$HF_HUB_CACHE/models--ORG--NAME/snapshots/COMMIT`, `refs/BRANCH`) is shared with transformers
and every other HF tool, and a model downloaded once is found again offline. The environment is
read when a model is resolved, not when huggingface_hub was imported (which freezes its own
copies of HF_HUB_CACHE and HF_HUB_OFFLINE), so a service and its tests see the same settings.

Every failure (missing, gated, private, unknown revision, not cached while offline) is one
`ModelNotFoundError` line that names the id: it is what an operator reads in a service's log.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# `ORG/NAME` as the hub spells repo ids; a bare `NAME` is read as a local path, never an id.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What the worker and the tokenizer read. Repos often carry the same weights again as
# `*.bin`, `*.pth` or `original/consolidated.*` (Llama ships both): never downloaded.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
_TRUE = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class HubFlags:
    """Inherited by the config of every service that reads the model (worker, tokenizer,
    detokenizer), so `radixmesh serve X --model-path ORG/NAME` resolves the same snapshot.
    `radixmesh up` resolves once and hands the services a directory instead."""

    revision: str | None = field(default=None, metadata={
        "help": "hub ids: the branch, tag or commit to load (default: main)"})
    # Not in repr: configs get logged, tokens must not be.
    hf_token: str | None = field(default=None, repr=False, metadata={
        "help": "hub ids: the access token for gated or private models (default: $HF_TOKEN)"})


class ModelNotFoundError(FileNotFoundError, ValueError):
    """No model where `--model-path` points: not a directory here, nor a usable hub id.

    A FileNotFoundError for callers that read files, and a ValueError for the CLIs, which
    report a rejected flag as one line (`radixmesh up` and `serve` catch ValueError).
    """


def is_hub_id(model_path: str | Path) -> bool:
    """True for `ORG/NAME` that is not an existing local path (a local directory wins)."""
    text = str(model_path)
    return bool(HUB_ID.match(text)) and not Path(text).expanduser().exists()


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or transformers' TRANSFORMERS_OFFLINE) as huggingface_hub reads it."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_cache_dir() -> Path | None:
    """HF_HUB_CACHE, else HF_HOME/hub; None leaves huggingface_hub's default."""
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if cache:
        return Path(cache).expanduser()
    home = os.environ.get("HF_HOME")
    return Path(home).expanduser() / "hub" if home else None


def hub_token(token: str | None) -> str | None:
    """`--hf-token`, else HF_TOKEN (huggingface_hub would also read its stored login)."""
    return token or os.environ.get("HF_TOKEN") or None


def snapshot_download(repo_id: str, **kwargs: Any) -> str:
    """The seam to huggingface_hub (tests wrap it to see the arguments); imported late so that
    services resolving only local directories never pay for the import."""
    from huggingface_hub import snapshot_download as download
    return download(repo_id, **kwargs)


def resolve_hub_model(repo_id: str, revision: str | None = None,
                      token: str | None = None) -> Path:
    """The local snapshot directory of `repo_id` at `revision` (default: main), downloaded with
    a progress bar when online and not cached; offline (HF_HUB_OFFLINE=1) only the cache is
    read. Raises ModelNotFoundError, one line naming the id, when it cannot be had."""
    offline = hub_offline()
    try:
        path = snapshot_download(
            repo_id, revision=revision, token=hub_token(token), cache_dir=hub_cache_dir(),
            local_files_only=offline, allow_patterns=ALLOW_PATTERNS)
    except ImportError:
        raise ModelNotFoundError(
            f"--model-path {repo_id!r} is not a local directory, and huggingface_hub, which "
            "resolves hub ids, is not installed") from None
    except (OSError, ValueError) as error:  # every huggingface_hub error is one of these
        raise ModelNotFoundError(_explain(repo_id, revision, offline, error)) from error
    return Path(path)


def _explain(repo_id: str, revision: str | None, offline: bool, error: Exception) -> str:
    """One line: what went wrong with `repo_id` and what to do about it."""
    kind = type(error).__name__
    at = f" at revision {revision!r}" if revision else ""
    if kind == "GatedRepoError":
        return (f"model {repo_id!r} is gated: accept its terms on huggingface.co, then pass "
                "--hf-token or set HF_TOKEN")
    if kind == "RepositoryNotFoundError":
        return (f"model {repo_id!r} was not found on the Hugging Face hub (a private model "
                "needs --hf-token or HF_TOKEN)")
    if kind == "RevisionNotFoundError":
        return f"model {repo_id!r} has no revision {revision!r} on the Hugging Face hub"
    if offline or kind in ("LocalEntryNotFoundError", "IncompleteSnapshotError"):
        where = hub_cache_dir() or "the default hub cache"
        why = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
        return (f"model {repo_id!r}{at} is not a local directory and not in the hub cache "
                f"({where}), and {why}")
    detail = " ".join(str(error).split())[:200]
    return f"model {repo_id!r}{at} could not be fetched from the Hugging Face hub: {kind}: {detail}"


def hub_id_of_snapshot(path: str | Path) -> str | None:
    """`ORG/NAME` for a directory `.../models--ORG--NAME/snapshots/COMMIT`, else None: the name
    clients use for a model resolved from the hub is its id, not a commit hash."""
    parts = Path(path).parts
    if len(parts) < 3 or parts[-2] != "snapshots" or not parts[-3].startswith("models--"):
        return None
    return parts[-3].removeprefix("models--").replace("--", "/", 1)
