"""The Prefect and MLflow servers behind `make ui`: start in the background, wait until healthy, stop.

Both bind to 127.0.0.1 only. Pid and log files live in the project's run folder (`.run/`), so
`make ui-stop` stops exactly the processes `make ui` started, and a second `make ui` finds them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
STOP_GRACE_S = 10  # a server still up this long after SIGTERM is killed


@dataclass(frozen=True)
class Server:
    name: str
    port: int
    health: str  # path answering 200 when the server is up

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self, home: Path) -> list[str]:
        bin_dir = Path(sys.executable).parent
        if self.name == "prefect":
            return [str(bin_dir / "prefect"), "server", "start", "--host", HOST, "--port", str(self.port)]
        store = home / "mlflow"
        return [str(bin_dir / "mlflow"), "server", "--host", HOST, "--port", str(self.port),
                "--backend-store-uri", f"sqlite:///{store}/mlflow.db",
                "--artifacts-destination", str(store / "artifacts"), "--workers", "1"]


def servers(prefect_port: int | None = None, mlflow_port: int | None = None) -> list[Server]:
    return [Server("prefect", prefect_port or int(os.environ.get("PREFECT_PORT", 4200)), "/api/health"),
            Server("mlflow", mlflow_port or int(os.environ.get("MLFLOW_PORT", 5000)), "/health")]


def healthy(server: Server, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(server.url + server.health, timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def _pid(run_dir: Path, server: Server) -> int | None:
    """The running server's pid, from its pid file (removed once the server is gone)."""
    path = run_dir / f"{server.name}.pid"
    if not path.exists():
        return None
    pid = int(path.read_text())
    try:  # a server this process started and that ended stays a zombie, still signalable, until reaped
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # started by another process: init reaps it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        path.unlink()
        return None
    return pid


def start(run_dir: Path, wait_s: float = 180, **ports: int) -> list[Server]:
    """Start whichever server is not running yet; return once both answer their health check."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "mlflow").mkdir(exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(run_dir / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_API_URL": f"http://{HOST}:{servers(**ports)[0].port}/api"}
    started = []
    for server in servers(**ports):
        if _pid(run_dir, server):
            print(f"{server.name} already running at {server.url} (pid file {run_dir / server.name}.pid)")
            continue
        if healthy(server):
            raise RuntimeError(f"port {server.port} already answers {server.health}: another {server.name} "
                               f"server not started by `make ui`; stop it or set {server.name.upper()}_PORT")
        log = open(run_dir / f"{server.name}.log", "ab")
        proc = subprocess.Popen(server.command(run_dir), stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # outlives `make ui`; stopped by pid
        (run_dir / f"{server.name}.pid").write_text(str(proc.pid))
        started.append(server)
    deadline = time.monotonic() + wait_s
    for server in servers(**ports):
        while not healthy(server):
            if time.monotonic() > deadline or (server in started and not _pid(run_dir, server)):
                raise RuntimeError(f"{server.name} did not become healthy; see {run_dir / server.name}.log")
            time.sleep(0.5)
    return servers(**ports)


def stop(run_dir: Path) -> list[str]:
    """Stop the servers whose pid files `start` wrote (their whole process groups): SIGTERM to all at once,
    then SIGKILL to any still up STOP_GRACE_S later."""
    running = {server: pid for server in servers() if (pid := _pid(run_dir, server)) is not None}
    for pid in running.values():
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while any(_pid(run_dir, server) for server in running) and time.monotonic() < deadline:
        time.sleep(0.1)
    for server, pid in running.items():
        if _pid(run_dir, server):
            _signal_group(pid, signal.SIGKILL)
        (run_dir / f"{server.name}.pid").unlink(missing_ok=True)
    return [server.name for server in running]

def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass  # ended since its pid was read


def free_port() -> int:
    """A loopback port nothing listens on right now (for tests and benchmarks)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def http_json(url: str, payload: dict | None = None, tries: int = 10) -> dict:
    """GET (or POST `payload`) JSON; retries 503, which a busy Prefect server answers (its client retries too)."""
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    for attempt in range(tries):
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            if err.code != 503 or attempt == tries - 1:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")
