"""The comparison: one row per arm and seed, then mean +- standard error over seeds per arm.

Each arm is charged the labels and compute of its whole lineage: the bridge pays for the
teacher's GRPO too, which is the point of the paper's accounting.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from pathlib import Path

from .dag import Plan, canonical, family, lineage, read_manifest


def rows(plan: Plan, root: Path) -> list[dict]:
    """One dict per (arm, seed): metrics of its evaluation, labels spent and compute of its lineage."""
    out = []
    for row in plan.rows:
        evaluation = read_manifest(root, row.evaluation)
        nodes = lineage(row.model)
        manifests = {n.key: read_manifest(root, n) for n in nodes}
        spent = [(n, manifests[n.key]) for n in nodes if manifests[n.key] and manifests[n.key]["labels_used"]]
        record = {
            "arm": row.arm, "seed": row.seed, "budget": row.budget, "status": "completed" if evaluation else "missing",
            "labels_used": sum(m["labels_used"] for _, m in spent),
            "labels_on": ", ".join(f"{m['labels_used']} {m['labels_on']} on {family(n)}" for n, m in spent) or "none",
            "compute_s": round(sum(m["compute_s"] for m in manifests.values() if m), 1),
            "model_key": row.model.key, "eval_key": row.evaluation.key,
        }
        if evaluation:
            record.update({k: v for k, v in evaluation["metrics"].items() if "@" in k})
        out.append(record)
    return out


def metric_names(table: list[dict]) -> list[str]:
    names: list[str] = []
    for r in table:
        names += [k for k in r if "@" in k and k not in names]
    return names


def summary(table: list[dict]) -> list[dict]:
    """Mean and standard error over seeds, per arm (and labeled budget), in the grid's order."""
    arms: dict[tuple, list[dict]] = {}
    for r in table:
        arms.setdefault((r["arm"], r["budget"]), []).append(r)
    out = []
    for (arm, budget), group in arms.items():
        done = [r for r in group if r["status"] == "completed"]
        line = {"arm": arm, "budget": budget, "seeds": len(done), "labels_on": group[0]["labels_on"],
                "labels_used": group[0]["labels_used"],
                "compute_s": round(sum(r["compute_s"] for r in group) / len(group), 1)}
        for name in metric_names(done):
            values = [r[name] for r in done if name in r]
            mean = sum(values) / len(values)
            line[name], line[f"{name} sem"] = mean, _sem(values, mean)
        out.append(line)
    return out


def _sem(values: list[float], mean: float) -> float:
    if len(values) < 2:
        return 0.0
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def paired(table: list[dict], above: str, below: str, metric: str) -> dict:
    """`above` minus `below` seed by seed, on the seeds where both completed: the differences, their mean
    and its standard error. Pairing removes what a seed shares between arms (with `seed_scope: all`,
    its base models)."""
    value = {(r["arm"], r["seed"]): r[metric] for r in table if r["status"] == "completed" and metric in r}
    seeds = sorted({s for a, s in value if a == above} & {s for a, s in value if a == below})
    differences = [value[above, s] - value[below, s] for s in seeds]
    mean = sum(differences) / len(differences) if differences else math.nan
    return {"seeds": seeds, "differences": differences, "mean": mean, "sem": _sem(differences, mean)}


def markdown(table: list[dict]) -> str:
    lines = summary(table)
    names = metric_names(table)
    sweep = len({r["budget"] for r in table}) > 1
    head = ["arm", *(["L"] if sweep else []), "seeds", *names, "labels used", "compute (s)"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in lines:
        cells = [_cell(r, n) for n in names]
        row = [r["arm"], *([str(r["budget"])] if sweep else []), str(r["seeds"]), *cells, r["labels_on"],
               f"{r['compute_s']:.0f}"]
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out) + "\n"


def _cell(line: dict, name: str) -> str:
    """Mean ± standard error in %; one seed has no error to give."""
    if name not in line:
        return "-"
    if line["seeds"] < 2:
        return f"{100 * line[name]:.1f}"
    return f"{100 * line[name]:.1f} ± {100 * line[name + ' sem']:.1f}"


def to_csv(table: list[dict]) -> str:
    fields = ["arm", "seed", "budget", "status", *metric_names(table), "labels_used", "labels_on", "compute_s"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(table)
    return buf.getvalue()


def chart(table: list[dict], path: Path, title: str = "sparse2dense: arms compared") -> None:
    """The comparison as a picture: bars per arm, or, for a budget sweep, accuracy against labels spent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = len({r["budget"] for r in table}) > 1
    width = 7 if sweep else max(6, 0.8 * len(summary(table)))
    fig, ax = plt.subplots(figsize=(width, 4))
    (plot_sweep if sweep else plot_bars)(ax, table)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def headline_metric(table: list[dict]) -> str | None:
    """The first benchmark's avg@n: what the charts show."""
    return next((n for n in metric_names(table) if "/avg@" in n), None)


def plot_bars(ax, table: list[dict]) -> None:
    """Each arm's headline metric, mean over seeds with standard-error bars."""
    name = headline_metric(table)
    if name:
        shown = [r for r in summary(table) if name in r]
        ax.bar([r["arm"] for r in shown], [100 * r[name] for r in shown],
               yerr=[100 * r[f"{name} sem"] for r in shown], capsize=3, color="#4c72b0")
        ax.set_ylabel(f"{name} (%)")
    ax.tick_params(axis="x", rotation=45)


def plot_sweep(ax, table: list[dict]) -> None:
    """One line per arm: the headline metric against the labeled examples its whole lineage spent."""
    name = headline_metric(table)
    if not name:
        return
    lines = summary(table)
    for i, arm in enumerate(dict.fromkeys(r["arm"] for r in lines)):
        points = sorted((r["labels_used"], 100 * r[name], 100 * r[f"{name} sem"]) for r in lines
                        if r["arm"] == arm and name in r)
        if not points:
            continue
        if len({x for x, _, _ in points}) == 1:  # spends nothing, or the same at every budget: a reference level
            ax.axhline(points[0][1], linestyle=":", color=f"C{i}", label=f"{arm} ({points[0][0]} labels)")
            continue
        xs, ys, errs = zip(*points)
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, color=f"C{i}", label=arm)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("labeled examples spent (the arm's whole lineage)")
    ax.set_ylabel(f"{name} (%)")
    ax.legend(fontsize=8)


def write(table: list[dict], folder: Path) -> dict[str, Path]:
    """comparison.{md,csv,json,png} in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"md": folder / "comparison.md", "csv": folder / "comparison.csv",
             "json": folder / "comparison.json", "png": folder / "comparison.png"}
    files["md"].write_text(markdown(table))
    files["csv"].write_text(to_csv(table))
    files["json"].write_text(json.dumps(table, indent=2))
    chart(table, files["png"])
    return files


def write_report(plan: Plan, root: Path) -> dict:
    """The comparison of what `plan` has computed, written to `root`/report/<key of its rows>."""
    table = rows(plan, root)
    key = report_key(table)
    files = write(table, root / "report" / key)
    return {"key": key, "rows": table, "files": {k: str(v) for k, v in files.items()}, "markdown": markdown(table)}


def report_key(table: list[dict]) -> str:
    rows = [(r["arm"], r["seed"], r["budget"], r["eval_key"], r["status"]) for r in table]
    return hashlib.sha256(canonical(rows).encode()).hexdigest()[:16]
