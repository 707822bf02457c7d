"""Node locks as leases: a lock names its holder, and a dead holder's lock is broken, not waited on.

Prefect's FileSystemLockManager writes `{holder, expiration}` and, with no expiration, a lock
left by a killed grid makes the next grid wait forever. Here each lock also records the host,
pid and process start time of its holder, and a heartbeat renews the lock file's mtime while it
is held. A lock is broken, with a warning naming it, when its holder's process is gone (same
host) or its lease has not been renewed for LEASE_S (another host, e.g. a lost machine).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from prefect.locking.filesystem import FileSystemLockManager

from sparse2dense.execution import stopping

log = logging.getLogger("sparse2dense")
HOST = socket.gethostname()
RENEW_EVERY_S = 30
LEASE_S = 90


def process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), so a reused pid is not taken for the holder."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    return started is None or process_start(pid) in (None, started)


class _Heartbeat:
    """Renews the mtime of every lock file this process holds."""

    def __init__(self):
        self.held: set[Path] = set()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def hold(self, path: Path) -> None:
        with self.lock:
            self.held.add(path)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._renew, daemon=True, name="lock-lease")
                self.thread.start()

    def drop(self, path: Path) -> None:
        with self.lock:
            self.held.discard(path)

    def _renew(self) -> None:
        while True:
            time.sleep(RENEW_EVERY_S)
            with self.lock:
                paths = list(self.held)
            for path in paths:
                try:
                    os.utime(path)
                except FileNotFoundError:
                    self.drop(path)


HEARTBEAT = _Heartbeat()


def release_held() -> list[str]:
    """Remove every lock this process holds (a clean stop on SIGINT/SIGTERM); returns the keys."""
    with HEARTBEAT.lock:
        paths = list(HEARTBEAT.held)
        HEARTBEAT.held.clear()
    for path in paths:
        path.unlink(missing_ok=True)
    return [p.stem for p in paths]


stopping.releases("locks", lambda: len(release_held()))


class LeaseLockManager(FileSystemLockManager):
    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                     hold_timeout: float | None = None) -> bool:
        self._ensure_lock_files_directory_exists()
        path = self._lock_path_for_key(key)
        if self.is_locked(key) and not self.is_lock_holder(key, holder):
            if not self.wait_for_lock(key, acquire_timeout):
                return False
        info = {"holder": holder, "expiration": None, "host": HOST, "pid": os.getpid(),
                "pid_start": process_start(os.getpid()), "since": datetime.now(UTC).isoformat()}
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(info))
        try:
            os.link(tmp, path)  # creates the lock with its whole content at once, or fails if it exists
        except FileExistsError:
            if not self.is_lock_holder(key, holder):
                return self.acquire_lock(key, holder, acquire_timeout, hold_timeout)
        finally:
            tmp.unlink(missing_ok=True)
        self._locks[key] = {"holder": holder, "expiration": None, "path": path}
        HEARTBEAT.hold(path)
        return True

    def release_lock(self, key: str, holder: str) -> None:
        path = self._lock_path_for_key(key)
        super().release_lock(key, holder)
        HEARTBEAT.drop(path)

    def is_locked(self, key: str, use_cache: bool = False) -> bool:
        path = self._lock_path_for_key(key)
        reason = _stale(path)
        if reason:
            log.warning("breaking the lock of node %s (%s): %s", path.stem, path, reason)
            path.unlink(missing_ok=True)
            self._locks.pop(key, None)
            return False
        return super().is_locked(key, use_cache=use_cache)


def _stale(path: Path) -> str | None:
    """Why the lock at `path` is dead, or None while its holder may still be working."""
    try:
        info = json.loads(path.read_text())
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # being written right now
    if info.get("host") == HOST and "pid" in info:
        if not _alive(info["pid"], info.get("pid_start")):
            return f"its holder, pid {info['pid']} on {HOST} (since {info.get('since')}), is gone"
        return None
    if age > LEASE_S:
        return f"its holder on {info.get('host', 'an unknown host')} has not renewed it for {age:.0f}s"
    return None
