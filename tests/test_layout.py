"""The tree shows the architecture: layers import only downwards, no import circle, and planning without torch.

Read from the source (every import, lazy ones inside functions included), so nothing needs to run.
"""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Each layer may import its own and the layers above it in this list, never one below.
LAYERS = (
    ("config", "console", "locations", "servers", "identity"),  # settings and plumbing
    ("data",),                                                  # problems, splits, answer checkers
    ("planning", "hub_smoke"),                                  # DAG, cost, preflight, report; stand-in builder
    ("models", "generation"),                                   # torch from here down
    ("stages",),
    ("tracking",),
    ("execution",),                                             # one node here, launched, on Ray
    ("flows", "tasks"),                                         # Prefect lives only here
    ("cli",),
)
HEAVY = {"torch", "transformers", "trl", "accelerate", "vllm", "deepspeed", "prefect"}


def _modules() -> dict[str, Path]:
    found = {}
    for top in ("sparse2dense", "flows", "tasks"):
        for path in (REPO / top).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """Every module `name` imports anywhere in its file (absolute names; `from x import y` counts x.y if a module)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in MODULES)
    return found


GRAPH = {name: {m for m in _imports(name) if m in MODULES and m != name} for name in MODULES}


def _layer(name: str) -> int:
    unit = name.split(".")[0] if name.split(".")[0] in ("flows", "tasks") else (name.split(".") + [""])[1]
    return next(i for i, units in enumerate(LAYERS) if unit in units)


def test_at_most_twelve_modules_at_the_package_top_and_prefect_only_in_flows_and_tasks():
    top = [p.stem for p in (REPO / "sparse2dense").glob("*.py") if p.stem != "__init__"]
    assert len(top) <= 12, top
    prefect_users = {n for n in MODULES if any(m.split(".")[0] == "prefect" for m in _imports(n))}
    assert {n.split(".")[0] for n in prefect_users} <= {"flows", "tasks"}, prefect_users


def test_every_module_has_a_layer_and_imports_only_its_own_or_a_lower_one():
    upward = [(name, dep) for name, deps in GRAPH.items() if name != "sparse2dense"
              for dep in deps if dep != "sparse2dense" and _layer(dep) > _layer(name)]
    assert upward == []


def test_no_import_circle():
    def walk(name: str, path: list[str]) -> list[str] | None:
        for dep in sorted(GRAPH[name]):
            if dep in path:
                return path[path.index(dep):] + [dep]
            if dep not in done and (found := walk(dep, path + [dep])):
                return found
        done.add(name)
        return None

    done: set[str] = set()
    circles = [c for name in sorted(MODULES) if (c := walk(name, [name]))]
    assert circles == []


def test_planning_and_data_import_no_torch_transformers_trl_or_prefect_even_lazily():
    def reach(name: str, seen: set[str]) -> set[str]:
        seen.add(name)
        for dep in GRAPH[name] - seen:
            reach(dep, seen)
        return seen

    for root in [n for n in MODULES if n.startswith(("sparse2dense.planning", "sparse2dense.data"))]:
        heavy = {(m, i) for m in reach(root, set()) for i in _imports(m) if i.split(".")[0] in HEAVY}
        assert heavy == set(), root


def _top_level_names(module: str) -> set[str]:
    names = set()
    for node in ast.parse(MODULES[module].read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def test_the_scripts_and_benchmarks_import_only_what_exists():
    """They run outside the suite's imports (`make bench`, a GPU machine): a moved module must not strand them."""
    missing = []
    for path in [*(REPO / "scripts").glob("*.py"), *(REPO / "benchmarks").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                missing += [(path.name, a.name) for a in node.names
                            if a.name.split(".")[0] in ("sparse2dense", "flows", "tasks") and a.name not in MODULES]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("sparse2dense", "flows",
                                                                                              "tasks"):
                missing += [(path.name, f"{node.module}.{a.name}") for a in node.names
                            if f"{node.module}.{a.name}" not in MODULES
                            and not (node.module in MODULES and a.name in _top_level_names(node.module))]
    assert missing == []
