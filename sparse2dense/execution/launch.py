"""Launched nodes: one node in its own process group, a plain process or `accelerate launch` over several.

The launcher writes `<node>/spec.json` (the node, its inputs' manifests, the profile, where to
track), starts `python -m sparse2dense.execution.launched spec.json` (or `accelerate launch ... -m
sparse2dense.execution.launched spec.json`, once per machine of a gang), streams every line it prints to
`on_line`, and kills the whole group on a timeout or when the launcher itself is stopped. Each
rank also watches the launcher's pid and ends its group if the launcher dies, so a killed grid
leaves nothing training on behind it. GPU memory is free again when the processes end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from importlib import resources as package_files
from pathlib import Path

from ..config import Profile, ResourceSpec
from ..planning.dag import MANIFEST, SPEC, NodeSpec
from ..servers import free_port
from ..stages.common import write_json
from .node_runner import NodeTimeout, launched_env

KILL_GRACE_S = 10
_RUNNING: dict[int, subprocess.Popen] = {}  # process groups this process started and has not ended yet, by pid
_LOCK = threading.Lock()


class NodeFailed(RuntimeError):
    """A launched node's processes failed; the message ends with the last lines they printed."""


@dataclass(frozen=True)
class Tracking:
    """Where a node's MLflow records go: its grid's experiment (None: not tracked) and the tags of its run."""

    experiment: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def tagged(self, tags: dict[str, str]) -> Tracking:
        return Tracking(self.experiment, {**self.tags, **tags})


@dataclass(frozen=True)
class LaunchSpec:
    """`<node>/spec.json`: everything a launched node reads, written by the launcher before the node starts."""

    profile: Profile
    node: NodeSpec
    inputs: dict[str, dict]  # the input nodes' manifests, by role
    root: Path
    tracking: Tracking = Tracking()

    def write(self, path: Path) -> None:
        write_json(path, {"node": self.node.to_json(), "inputs": self.inputs, "root": str(self.root),
                          "profile": self.profile.model_dump(mode="json"),
                          "tracking": {"experiment": self.tracking.experiment, "tags": self.tracking.tags}})

    @classmethod
    def read(cls, path: Path) -> LaunchSpec:
        raw = json.loads(Path(path).read_text())
        return cls(Profile.model_validate(raw["profile"]), NodeSpec(**raw["node"]), raw["inputs"], Path(raw["root"]),
                   Tracking(**raw["tracking"]))


def run_launched(spec: LaunchSpec, resources: ResourceSpec, on_line=print) -> dict:
    """Run `spec.node` in its own process group(s); returns the manifest its main process wrote."""
    node = spec.node
    out = spec.root / node.kind / node.key
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / SPEC
    spec.write(spec_path)
    label = f"{node.kind} {node.name} [{node.key[:8]}]"
    if resources.machines > 1 and _in_ray_worker():
        from .ray_gang import run_gang

        def machine(rank: int, port: int, main_ip: str) -> list[str]:
            return accelerate_command(resources, spec_path, rank, port, main_ip)

        codes, tail = run_gang(resources, machine, on_line)
    else:
        codes, tail = _run_here(launch_commands(resources, spec_path), resources.timeout_s, on_line)
    if codes is None:
        raise NodeTimeout(f"{label} ran past its limit of {resources.timeout_s}s and was stopped; "
                          "its last checkpoint stays for the next run")
    if any(codes):
        raise NodeFailed(f"{label} exited with {codes}:\n" + "\n".join(tail))
    manifest = out / MANIFEST
    if not manifest.exists():
        raise NodeFailed(f"{label} ended without writing {manifest}")
    return json.loads(manifest.read_text())


def _run_here(commands: list[list[str]], timeout_s: int | None, on_line) -> tuple[list[int] | None, deque]:
    """Run every command in its own process group on this host; (exit codes or None on timeout, last lines)."""
    tail: deque[str] = deque(maxlen=40)
    procs = [_start(cmd) for cmd in commands]
    readers = [threading.Thread(target=_pump, args=(p, on_line, tail), daemon=True) for p in procs]
    for reader in readers:
        reader.start()
    try:
        codes = _wait(procs, timeout_s)
    finally:
        for proc in procs:
            kill_group(proc)
        for reader in readers:
            reader.join(timeout=5)
    return codes, tail


def _in_ray_worker() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE


def launch_commands(resources: ResourceSpec, spec_path: Path) -> list[list[str]]:
    """The command line for each machine of the node (one for a single machine)."""
    if resources.launch == "process":
        return [_node_command(resources, spec_path)]
    port = free_port()
    return [accelerate_command(resources, spec_path, rank, port) for rank in range(resources.machines)]


def accelerate_command(resources: ResourceSpec, spec_path: Path, machine_rank: int, port: int,
                       main_ip: str = "127.0.0.1") -> list[str]:
    """One machine's `accelerate launch` of the node."""
    return _node_command(resources, spec_path, "-m", "accelerate.commands.launch",
                         *accelerate_flags(resources, machine_rank, port, main_ip))


def _node_command(resources: ResourceSpec, spec_path: Path, *launcher: str) -> list[str]:
    """The node's entry point under its runtime's Python (the grid's own unless `python` names another)."""
    return [resources.python or sys.executable, *launcher, "-m", "sparse2dense.execution.launched", str(spec_path)]


def accelerate_flags(resources: ResourceSpec, machine_rank: int, port: int, main_ip: str = "127.0.0.1") -> list[str]:
    """`accelerate launch` flags: TRL's shipped config for the strategy, plus this node's sizes.

    DDP goes through torchrun (TRL's multi_gpu.yaml) on GPUs and CPUs alike: on a CPU profile the
    trainer's `use_cpu` makes the ranks join over gloo. A gang launched here runs its machines on
    this host over loopback (how the tests simulate machines); the Ray runner places each
    machine's launch and passes the main host's address.
    """
    flags = ["--config_file", str(config_file(resources)),
             "--num_processes", str(resources.world_size), "--num_machines", str(resources.machines),
             "--machine_rank", str(machine_rank), "--main_process_ip", main_ip, "--main_process_port", str(port)]
    if resources.strategy == "zero3":
        flags += ["--deepspeed_config_file", str(deepspeed_file(resources))]
    if resources.strategy == "fsdp2":
        # Checkpoints as shards, each rank writing its own (TRL's config gathers model and optimizer on rank 0);
        # the final model is still saved whole (`Sharded.save_model`).
        flags += ["--fsdp_state_dict_type", "SHARDED_STATE_DICT"]
        if resources.offload:
            flags += ["--fsdp_offload_params", "true"]
    return flags


def config_file(resources: ResourceSpec) -> Path:
    """TRL's accelerate configs (trl/accelerate_configs/); zero3's is ours (launch_configs/), as TRL's
    leaves DeepSpeed reducing gradients in the compute dtype (bf16)."""
    if resources.strategy == "zero3":
        return Path(str(package_files.files("sparse2dense.execution") / "launch_configs" / "zero3.yaml"))
    name = {"ddp": "multi_gpu.yaml", "fsdp2": "fsdp2.yaml"}[resources.strategy]
    return Path(str(package_files.files("trl") / "accelerate_configs" / name))


def deepspeed_file(resources: ResourceSpec) -> Path:
    """ZeRO-3's DeepSpeed settings: fp32 gradient reduction, the final model gathered on save, offload or not."""
    name = "zero3-offload.json" if resources.offload else "zero3.json"
    return Path(str(package_files.files("sparse2dense.execution") / "launch_configs" / name))


def _start(command: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=launched_env(),
                            start_new_session=True)
    with _LOCK:
        _RUNNING[proc.pid] = proc
    return proc


def _pump(proc: subprocess.Popen, on_line, tail: deque) -> None:
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail.append(line)
        on_line(line)


def _wait(procs: list[subprocess.Popen], timeout_s: int | None) -> list[int] | None:
    """Exit codes once every process ended (a gang stops when one machine fails); None on timeout."""
    deadline = time.monotonic() + timeout_s if timeout_s else None
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
            return [c if c is not None else -signal.SIGKILL for c in codes]
        if deadline and time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group `proc` leads, SIGKILL whatever is left after a grace period."""
    with _LOCK:
        _RUNNING.pop(proc.pid, None)
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()  # reaps the leader: until then it stays in its group as a zombie, and the group looks alive
            if not _group_alive(proc.pid):
                return
            time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def kill_all() -> int:
    """Kill every group this process launched (on SIGINT/SIGTERM of the grid); returns how many."""
    with _LOCK:
        running = list(_RUNNING.values())
    for proc in running:
        kill_group(proc)
    return len(running)

