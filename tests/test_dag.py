"""The DAG's core without Prefect or a trainer: keys, sharing, and which nodes a grid computes or clears."""

import json

import pytest

from flows.grid import to_recompute
from sparse2dense.config import load_grid, load_profile
from sparse2dense.planning import dag


def smoke(arms=None, seeds=(0,), **overrides) -> dag.Plan:
    return dag.plan(load_profile("smoke", overrides), load_grid("allocation"), arms, list(seeds))


def named(plan: dag.Plan, name: str, kind: str | None = None) -> dag.Node:
    [node] = [n for n in plan.nodes.values() if n.name == name and kind in (None, n.kind)]
    return node


def downstream(plan: dag.Plan, key: str) -> set[str]:
    """`key` and every node that depends on it."""
    found = {key}
    for k, node in plan.nodes.items():  # inputs come first
        if any(parent.key in found for _, parent in node.inputs):
            found.add(k)
    return found


def finish(root, plan: dag.Plan, keys=None, **manifest) -> None:
    """Write a completed manifest (no files) for these nodes, as a finished run leaves it."""
    for key in plan.nodes if keys is None else keys:
        folder = dag.node_dir(root, plan.nodes[key])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / dag.MANIFEST).write_text(json.dumps({"status": "completed", "files": {}} | manifest))


def test_a_key_is_its_kind_params_and_inputs_and_nothing_else():
    plan, again = smoke(), smoke()
    assert list(plan.nodes) == list(again.nodes)  # same profile, same keys, same order
    longer = smoke(**{"grpo.steps": 7})
    changed = set(plan.nodes) - set(longer.nodes)
    # GRPO's settings (student_grpo inherits them) change the GRPO nodes and everything downstream of them,
    # and nothing else: not the base models, not the raw teacher's rollouts.
    grpo = {k for k in changed if plan.nodes[k].kind in ("grpo", "replay")}
    assert named(plan, "teacher-grpo", "grpo").key in grpo
    assert changed == set().union(*(downstream(plan, k) for k in grpo))
    assert not {n.key for n in plan.nodes.values() if n.kind == "base" or n.name == "raw-rollouts"} & changed
    # A node's name is for people: the same computation under two names is one node.
    grpo = named(plan, "teacher-grpo", "grpo")
    assert dag.make_node(grpo.kind, "another name", grpo.params, grpo.input_map).key == grpo.key


def test_a_node_several_arms_need_is_planned_once():
    plan = smoke()
    chains = sum(len(dag.lineage(row.evaluation)) for row in plan.rows)
    assert len(plan.nodes) < chains
    teacher_grpo = named(plan, "teacher-grpo", "grpo")
    assert {"teacher-grpo", "bridge", "fkl-only", "opd-only"} <= set(plan.arms_of[teacher_grpo.key])
    # A second seed adds its own stages; the base models are shared unless each seed draws its own.
    two = smoke(seeds=(0, 1))
    bases = [n for n in two.nodes.values() if n.kind == "base"]
    assert len(bases) == (4 if two.profile.seed_scope == "all" else 2)
    assert len([n for n in two.nodes.values() if n.kind == "evaluate"]) == 2 * len(plan.rows)


def test_an_empty_root_computes_everything_and_clears_nothing(tmp_path):
    plan = smoke()
    assert to_recompute(plan, tmp_path, []) == (set(plan.nodes), set())


def test_a_finished_root_computes_nothing(tmp_path):
    plan = smoke()
    finish(tmp_path, plan)
    assert to_recompute(plan, tmp_path, []) == (set(), set())
    assert dag.all_done(plan, tmp_path)


@pytest.mark.parametrize("refresh", ["opd", "bridge", "key-prefix"])
def test_refresh_by_kind_name_or_key_prefix_recomputes_those_and_what_depends_on_them(tmp_path, refresh):
    plan = smoke()
    finish(tmp_path, plan)
    bridge = named(plan, "bridge", "opd")
    asked = bridge.key[:6] if refresh == "key-prefix" else refresh
    todo, clear = to_recompute(plan, tmp_path, [asked])
    opd = {k for k, n in plan.nodes.items() if n.kind == "opd"} if refresh == "opd" else {bridge.key}
    expected = set().union(*(downstream(plan, k) for k in opd))
    assert todo == clear == expected  # all of them finished: each starts over
    assert named(plan, "teacher-grpo", "grpo").key not in todo


def test_a_key_prefix_under_six_characters_names_nothing(tmp_path):
    plan = smoke()
    finish(tmp_path, plan)
    assert to_recompute(plan, tmp_path, [named(plan, "bridge", "opd").key[:5]]) == (set(), set())


def test_an_unfinished_node_resumes_and_a_damaged_one_starts_over(tmp_path):
    plan = smoke()
    grpo = named(plan, "teacher-grpo", "grpo")
    finish(tmp_path, plan, [k for k in plan.nodes if k != grpo.key])  # the teacher's GRPO never finished
    todo, clear = to_recompute(plan, tmp_path, [])
    assert todo == downstream(plan, grpo.key)
    # Its checkpoints stay for the next attempt; what was computed from its old result is cleared.
    assert clear == todo - {grpo.key}

    finish(tmp_path, plan, [grpo.key], files={"model/model.safetensors": {"size": 1, "mtime_ns": 0, "sha256": ""}})
    todo, clear = to_recompute(plan, tmp_path, [])  # its manifest lists a file that is gone
    assert todo == clear == downstream(plan, grpo.key)
    assert not dag.all_done(plan, tmp_path)


def test_a_node_logged_while_tracking_was_away_keeps_the_grid_on_the_flow(tmp_path):
    plan = smoke()
    finish(tmp_path, plan)
    finish(tmp_path, plan, [named(plan, "bridge", "opd").key], tracked=False)
    assert to_recompute(plan, tmp_path, []) == (set(), set())  # nothing to compute: the flow only logs it
    assert not dag.all_done(plan, tmp_path)
