"""What a base model *is*, for the cache key: a hub commit or a local folder's content fingerprint.

Keying on a name alone would let a new hub revision or a replaced local checkpoint silently reuse
every downstream node. Planning stays offline and fast: a hub id resolves through the local hub
cache first, the network only when it is allowed, and a local folder's fingerprint is memoised
by (path, size, mtime) of its files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from .config import ModelSpec, is_local

log = logging.getLogger("sparse2dense")
_COMMIT = 40  # hex digits of a git commit id
_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sparse2dense" / "fingerprints.json"


def identity(spec: ModelSpec) -> dict:
    """{'fingerprint': ...} for a local folder, {'hub': id, 'commit': sha or None} for a hub model."""
    if is_local(spec.name):
        folder = Path(spec.name).expanduser()
        return {"fingerprint": fingerprint(folder) if folder.is_dir() else None}
    return {"hub": spec.name, "commit": resolve_commit(spec.name, spec.revision)}


def resolve_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit a hub revision points at: pinned, from the local hub cache, or asked of the hub; None if unknown."""
    revision = revision or "main"
    if len(revision) == _COMMIT and all(c in "0123456789abcdef" for c in revision):
        return revision
    from huggingface_hub import constants

    ref = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / revision
    if ref.is_file():
        return ref.read_text().strip()
    if constants.HF_HUB_OFFLINE:
        return None
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(repo_id, revision=revision, timeout=5).sha
    except Exception as err:  # no network, no such repo: the plan says "unresolved", the preflight refuses
        log.debug("could not resolve %s@%s: %s", repo_id, revision, err)
        return None


def fingerprint(folder: Path) -> str:
    """sha256 over the folder's files (names and contents), or over one data file, memoised by sizes and mtimes."""
    folder = Path(folder)
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    stamp = hashlib.sha256(json.dumps([(p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                                       for p in files]).encode()).hexdigest()
    memo = _read_memo()
    key = str(folder.resolve())
    if memo.get(key, {}).get("stamp") == stamp:
        return memo[key]["fingerprint"]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode())
        with path.open("rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    value = digest.hexdigest()[:16]
    memo[key] = {"stamp": stamp, "fingerprint": value}
    _write_memo(memo)
    return value


def _read_memo() -> dict:
    try:
        return json.loads(_CACHE.read_text())
    except (OSError, ValueError):
        return {}


def _write_memo(memo: dict) -> None:
    try:
        _CACHE.parent.mkdir(parents=True, exist_ok=True)
        tmp = _CACHE.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, _CACHE)
    except OSError:
        pass  # a read-only home only costs a re-hash next time


def fetch_model(spec: ModelSpec) -> str:
    """The local folder holding a base model's files: the folder itself, or the hub snapshot of its commit."""
    if is_local(spec.name):
        folder = Path(spec.name).expanduser().resolve()
        if not folder.is_dir():  # else the base node would complete on a model that is not there
            raise FileNotFoundError(f"no model folder at {folder}")
        return str(folder)
    from huggingface_hub import snapshot_download

    commit = resolve_commit(spec.name, spec.revision)
    return snapshot_download(spec.name, revision=commit or spec.revision)
