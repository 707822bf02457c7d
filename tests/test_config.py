from pathlib import Path

import pytest
import yaml

from sparse2dense.config import ConfigError, load_grid, load_profile

PROFILES = sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "configs" / "profiles").glob("*.yaml"))


@pytest.mark.parametrize("name", PROFILES)
def test_shipped_profiles_load(name):
    profile = load_profile(name)
    assert profile.name == name


def test_paper_profiles_use_the_authors_hyperparameters():
    p = load_profile("qwen3-8b-1.7b")
    assert (p.grpo.epsilon, p.grpo.epsilon_high, p.grpo.loss_type, p.grpo.beta) == (0.2, 0.28, "dapo", 0.0)
    assert (p.grpo.num_generations, p.grpo.learning_rate, p.grpo.weight_decay) == (8, 1e-6, 0.1)
    assert p.grpo.prompts_per_step * p.grpo.steps_per_generation == 512
    e = p.evaluate
    assert (e.samples, e.temperature, e.top_p, e.top_k) == (16, 0.7, 0.8, 20)
    assert "\\boxed{}" in p.data.prompt_suffix


def write(tmp_path, name, data):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _in_epochs(data, **grpo):
    """Smoke's GRPO (teacher and student alike) measured in epochs."""
    data["grpo"] = {k: v for k, v in data["grpo"].items() if k != "steps"} | {"epochs": 1, **grpo}
    data.pop("student_grpo")


def smoke_with(tmp_path, edit):
    data = yaml.safe_load(open(load_profile.__globals__["CONFIG_DIR"] / "profiles" / "smoke.yaml"))
    edit(data)
    return write(tmp_path, "p", data)


@pytest.mark.parametrize("edit,field,expected", [
    (lambda d: d["grpo"].update(learning_rat=1e-3), "grpo.learning_rat", "Extra inputs are not permitted"),
    (lambda d: d["grpo"].update(steps="many"), "grpo.steps", "valid integer"),
    (lambda d: d["data"].update(labeled_budget=10_000), "data", "labeled_budget = 10000 is larger than"),
    (lambda d: d["evaluate"].update(pass_at=[1, 8]), "evaluate", "k=[8] is larger than samples (2)"),
    (lambda d: d["models"]["teacher"].update(vocab_size=100) or d["models"]["student"].update(vocab_size=101),
     "models", "vocabularies differ"),
    (lambda d: d["models"]["teacher"].pop("arch"), "models.teacher", "needs 'arch'"),
    (lambda d: d["grpo"].update(micro_batch=5), "grpo", "micro_batch (5) must divide"),
    (lambda d: d["data"].update(pool_size=2000), "data", "too many distinct problems"),
    (lambda d: d["opd"].update(epochs=2), "opd", "set either steps or epochs"),
    (lambda d: d["grpo"].pop("steps"), "grpo", "set either steps or epochs"),
    (lambda d: _in_epochs(d, prompts_per_step=32), "",
     "student_grpo.epochs: the held-out split (16 problems) holds no whole batch of 32 prompts"),
])
def test_bad_profiles_name_the_field(tmp_path, edit, field, expected):
    with pytest.raises(ConfigError) as err:
        load_profile(smoke_with(tmp_path, edit))
    message = str(err.value)
    assert f"  {field}" in message and expected in message


def test_the_paper_lengths_are_epochs_over_each_nodes_own_split():
    """15 epochs of whole 512-prompt rollouts: 1,620 steps on L, 360 for Stage 3 on H and for its replay."""
    from sparse2dense.planning import cost, dag

    plan = dag.plan(load_profile("qwen3-8b-1.7b"), load_grid("allocation"), None, [0])
    by_name = {n.name: n for n in plan.nodes.values()}
    steps = {name: dag.planned_steps(by_name[name]) for name in
             ("teacher-grpo", "direct-grpo", "bridge+grpo", "bridge+replay", "bridge")}
    assert steps == {"teacher-grpo": 1620, "direct-grpo": 1620, "bridge+grpo": 360, "bridge+replay": 360,
                     "bridge": 810}
    assert by_name["bridge+grpo"].params["epochs"] == {"epochs": 15, "over": 3480, "batches": 6}
    hours = {k: c.gpu_hours for k, c in cost.estimate(plan, Path("/nonexistent")).nodes.items()}
    stage3, direct = hours[by_name["bridge+grpo"].key], hours[by_name["direct-grpo"].key]
    assert stage3 == pytest.approx(direct * 360 / 1620, rel=0.01)
    assert hours[by_name["bridge+replay"].key] == stage3


def test_a_students_own_length_replaces_the_teachers(tmp_path):
    def edit(data):
        _in_epochs(data)
        data["student_grpo"] = {"steps": 3}

    p = load_profile(smoke_with(tmp_path, edit))
    assert (p.grpo.epochs, p.grpo.steps, p.student_grpo.steps, p.student_grpo.epochs) == (1, None, 3, None)


def test_unknown_profile_lists_known_ones():
    with pytest.raises(ConfigError, match="expected one of .*smoke"):
        load_profile("nope")


def test_overrides_are_validated():
    assert load_profile("smoke", {"data.labeled_budget": 8}).data.labeled_budget == 8
    with pytest.raises(ConfigError, match="data.labeled_budget"):
        load_profile("smoke", {"data.labeled_budget": -1})


def test_budget_sweep_grid_plans_every_strategy_at_every_budget():
    from sparse2dense.planning import dag

    grid = load_grid("budget-sweep")
    plan = dag.plan(load_profile("toy"), grid)
    assert {(r.arm, r.budget) for r in plan.rows} == {(a, b) for a in grid.arms for b in grid.budgets}
    # What spends no labels is planned once, whatever the budget.
    assert len({r.evaluation.key for r in plan.rows if r.arm == "raw-teacher-bridge"}) == 1


def test_allocation_grid():
    grid = load_grid("allocation")
    assert set(grid.arms) == {"teacher-base", "student-base", "teacher-grpo", "direct-grpo", "raw-teacher-bridge",
                              "fkl-only", "opd-only", "bridge", "bridge+grpo", "bridge+replay"}
    assert grid.nodes["bridge"].inputs() == {"teacher": "teacher-grpo", "student": "fkl-only"}


@pytest.mark.parametrize("nodes,arms,expected", [
    ({"a": {"kind": "grpo", "model": "b", "split": "labeled"}}, {"x": "a"}, "unknown node 'b'"),
    ({"a": {"kind": "opd", "teacher": "teacher"}}, {"x": "a"}, "missing ['student']"),
    ({"a": {"kind": "grpo", "model": "teacher"}}, {"x": "a"}, "'split' is required"),
    ({"a": {"kind": "replay", "model": "b"}, "b": {"kind": "replay", "model": "a"}}, {"x": "a"}, "cycle"),
    ({"r": {"kind": "rollouts", "model": "teacher"}}, {"x": "r"}, "not a model"),
    ({"f": {"kind": "forward_kl", "student": "student", "rollouts": "teacher"}}, {"x": "f"}, "not a rollouts node"),
])
def test_bad_grids(tmp_path, nodes, arms, expected):
    with pytest.raises(ConfigError, match=None) as err:
        load_grid(write(tmp_path, "g", {"name": "g", "nodes": nodes, "arms": arms}))
    assert expected in str(err.value)


def _keys(profile, kind, seeds=(0,)):
    from sparse2dense.planning import dag

    plan = dag.plan(profile, load_grid("allocation"), seeds=list(seeds))
    return {key for key, node in plan.nodes.items() if node.kind == kind}, plan


def test_cpu_threads_are_in_every_cpu_nodes_key():
    """CPU kernels reduce in an order that depends on the thread count: 33% or 62% for the same toy teacher."""
    one, _ = _keys(load_profile("smoke"), "base")
    two, _ = _keys(load_profile("smoke", {"hardware.num_threads": 2}), "base")
    assert one and not one & two
    all_one, _ = _keys(load_profile("smoke"), "grpo")
    all_two, _ = _keys(load_profile("smoke", {"hardware.num_threads": 2}), "grpo")
    assert not all_one & all_two
    # On GPUs the thread count decides no result, and no key holds it.
    paper, _ = _keys(load_profile("qwen3-8b-1.7b"), "grpo")
    assert paper == _keys(load_profile("qwen3-8b-1.7b", {"hardware.num_threads": 3}), "grpo")[0]


@pytest.mark.parametrize("name", [n for n in PROFILES if n.startswith("toy")])
def test_toy_profiles_pin_their_threads_and_draw_base_models_per_seed(name):
    profile = load_profile(name)
    assert profile.hardware.num_threads == 2 and profile.seed_scope == "all"


def test_seed_scope_all_pretrains_base_models_per_grid_seed():
    from sparse2dense.planning import dag

    shared, plan = _keys(load_profile("smoke"), "base", seeds=(0, 1, 2))
    assert len(shared) == 2 and {dag.node_tags(plan, k)["s2d.seed"] for k in shared} == {"all"}
    own, plan = _keys(load_profile("smoke", {"seed_scope": "all"}), "base", seeds=(0, 1, 2))
    assert len(own) == 6 and own >= shared  # seed 0 draws what the shared scope draws: computed once
    tags = sorted((plan.nodes[k].name, dag.node_tags(plan, k)["s2d.seed"]) for k in own)
    assert tags == [(role, str(s)) for role in ("student", "teacher") for s in (0, 1, 2)]
    teacher = [plan.nodes[k] for k in own if plan.nodes[k].name == "teacher"]
    assert sorted(n.params["seed"] for n in teacher) == [0, 1, 2]


def test_seed_scope_all_on_hub_models_is_refused():
    with pytest.raises(ConfigError, match="seed_scope"):
        load_profile("hub-smoke", {"seed_scope": "all"})


def test_the_backend_a_node_samples_with_is_in_its_key():
    """vLLM and transformers draw different samples from one seed: a node that samples keys its backend."""
    vllm = load_profile("hub-smoke-vllm")  # vLLM for rollouts and evaluation, transformers in GRPO and OPD
    hf = load_profile("hub-smoke-vllm", {"generation.backend": "transformers"})
    assert not _keys(hf, "evaluate")[0] & _keys(vllm, "evaluate")[0]
    # GRPO on a base model samples as in hub-smoke (the node runtime is no input); after vLLM's rollouts, not.
    assert len(_keys(hf, "grpo")[0] & _keys(vllm, "grpo")[0]) == 2 and _keys(hf, "grpo")[0] != _keys(vllm, "grpo")[0]
    assert not _keys(hf, "forward_kl")[0] & _keys(vllm, "forward_kl")[0]  # it trains on vLLM's rollouts
    _, plan = _keys(vllm, "opd")
    assert {n.params["sampler"] for n in plan.nodes.values() if n.kind in ("rollouts", "evaluate")} == {"vllm"}
    # transformers is left out of keys, so every node computed before vLLM ran keeps its key.
    assert all("sampler" not in n.params for n in plan.nodes.values() if n.kind not in ("rollouts", "evaluate"))


def test_vllm_on_a_cpu_has_no_sleep_mode():
    with pytest.raises(ConfigError, match="sleep_mode needs a GPU"):
        load_profile("hub-smoke-vllm", {"generation.colocated_backend": "vllm"})  # sleep_mode from the paper's
    assert load_profile("hub-smoke-vllm").generation.sleep_mode  # harmless where GRPO and OPD use transformers


def test_a_relative_node_runtime_is_taken_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    profile = load_profile("hub-smoke-vllm")
    assert profile.resources.of("evaluate").python == str(tmp_path / ".venv-node" / "bin" / "python")
    assert profile.resources.of("base").python is None  # inline: in the grid's process
