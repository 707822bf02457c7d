"""A node computes exactly what its key says, and a damaged result is recomputed with what depends on it."""

import json
import os
from pathlib import Path

import pytest
import yaml

from sparse2dense.config import load_grid, load_profile
from sparse2dense.planning import dag

from .conftest import PROFILE, Grid, copy_root, wait_for

pytestmark = pytest.mark.slow
ARMS = "teacher-grpo,direct-grpo,fkl-only"


def test_editing_the_profile_mid_grid_changes_nothing_under_way(grid):
    """The profile is read once: a node started after the edit still trains with the settings its key hashes."""
    profile = grid.root / "edited.yaml"
    original = {"extends": PROFILE, "name": "reliable"}
    profile.write_text(yaml.safe_dump(original))
    planned = dag.plan(load_profile(profile), load_grid("allocation"), ["teacher-grpo"])
    proc = grid.start("grid", "--profile", str(profile), "--arms", "teacher-grpo")
    wait_for(lambda: (grid.artifacts / ".prefect").exists(), 120)  # the grid has read its profile
    profile.write_text(yaml.safe_dump({**original, "grpo": {"learning_rate": 0.5, "steps": 3}}))
    assert proc.wait(timeout=600) == 0, proc.log_path.read_text()[-3000:]
    node = next(n for n in planned.nodes.values() if n.name == "teacher-grpo")
    manifest = dag.read_manifest(grid.artifacts, node)
    assert manifest and manifest["params"] == node.params and manifest["metrics"]["steps"] == 24
    rates = {h["learning_rate"] for h in json.loads((dag.node_dir(grid.artifacts, node) / "log_history.json")
                                                    .read_text()) if "learning_rate" in h}
    assert rates == {load_profile(PROFILE).grpo.learning_rate}


@pytest.fixture(scope="module")
def finished_root(based, tmp_path_factory, prefect_api) -> Path:
    """A root where the arms finished once; each test damages its own copy."""
    grid = copy_root(based, tmp_path_factory.mktemp("finished"), prefect_api)
    done = grid.run("grid", "--profile", PROFILE, "--arms", ARMS)
    assert done.returncode == 0, done.stderr[-3000:]
    return grid.root


@pytest.fixture
def finished(finished_root, tmp_path, prefect_api) -> Grid:
    return copy_root(finished_root, tmp_path, prefect_api)


def recomputed(grid, before: dict) -> set[str]:
    after = grid.manifests()
    return {after[k]["name"] for k in before if after[k]["finished_at"] != before[k]["finished_at"]}


def test_a_changed_file_recomputes_its_node_and_only_what_depends_on_it(finished):
    grid = finished
    before = grid.manifests()
    rollouts = grid.folder("rl-rollouts") / "rollouts.jsonl"
    data = bytearray(rollouts.read_bytes())
    data[-10] = ord("0") if data[-10] != ord("0") else ord("1")  # same size, other content
    rollouts.write_bytes(bytes(data))
    done = grid.run("grid", "--profile", PROFILE, "--arms", ARMS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{rollouts} has changed content" in done.stderr
    assert recomputed(grid, before) == {"rl-rollouts", "fkl-only", "evaluate:fkl-only"}


def test_a_missing_file_recomputes_its_node_and_only_what_depends_on_it(finished):
    grid = finished
    before = grid.manifests()
    weights = grid.folder("direct-grpo") / "model" / "model.safetensors"
    os.remove(weights)
    done = grid.run("grid", "--profile", PROFILE, "--arms", ARMS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{weights} is missing" in done.stderr
    assert recomputed(grid, before) == {"direct-grpo", "evaluate:direct-grpo"}


def test_an_untouched_root_is_reused_without_hashing(finished):
    grid = finished
    done = grid.run("grid", "--profile", PROFILE, "--arms", ARMS)
    assert done.returncode == 0 and "0 to compute" in done.stderr and "has changed" not in done.stderr
