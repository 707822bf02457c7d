"""`make ui` and `make serve` for real: servers on free loopback ports, a run triggered through the
Prefect API (the UI's Run button), the results read back from MLflow's REST API, and both UIs
checked in a real browser (Debian's chromium driven by Playwright). Screenshots go to
`test-output/screenshots/`.
"""

import os
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest

from sparse2dense import servers
from sparse2dense.servers import free_port, http_json

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO / "test-output" / "screenshots"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """`make ui` servers plus `make serve`, isolated in a temporary run folder."""
    run_dir = tmp_path_factory.mktemp("run")
    prefect, mlflow = servers.start(run_dir, prefect_port=free_port(), mlflow_port=free_port())
    env = {**os.environ, "PREFECT_API_URL": f"{prefect.url}/api", "MLFLOW_TRACKING_URI": mlflow.url,
           "S2D_ARTIFACTS": str(run_dir / "artifacts"), "PREFECT_HOME": str(run_dir / "serve-home")}
    log = open(run_dir / "serve.log", "wb")
    serve = subprocess.Popen([sys.executable, "-m", "flows.serve"], cwd=REPO, env=env, stdout=log,
                             stderr=subprocess.STDOUT)
    try:
        deployment = _wait_for_deployment(prefect.url, serve, run_dir / "serve.log")
        yield {"prefect": prefect.url, "mlflow": mlflow.url, "deployment": deployment, "run_dir": run_dir}
    finally:
        serve.terminate()
        serve.wait(30)
        assert servers.stop(run_dir) == ["prefect", "mlflow"]


def _wait_for_deployment(prefect: str, serve, log: Path) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert serve.poll() is None, log.read_text()[-3000:]
        try:
            return http_json(f"{prefect}/api/deployments/name/ablation-grid/local")
        except urllib.error.HTTPError:
            time.sleep(1)
    raise AssertionError("ablation-grid/local was not served:\n" + log.read_text()[-3000:])


@pytest.fixture(scope="module")
def triggered(stack):
    """A smoke grid started as the UI's Run button does, awaited to completion."""
    prefect, deployment = stack["prefect"], stack["deployment"]
    run = http_json(f"{prefect}/api/deployments/{deployment['id']}/create_flow_run",
                   {"parameters": {"profile": "smoke", "seeds": [0]}})
    start, deadline = time.monotonic(), time.monotonic() + 600
    while time.monotonic() < deadline:
        state = http_json(f"{prefect}/api/flow_runs/{run['id']}")["state"]
        if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        time.sleep(2)
    print(f"UI trigger to finished smoke grid: {time.monotonic() - start:.0f}s")
    assert state["type"] == "COMPLETED", (stack["run_dir"] / "serve.log").read_text()[-5000:]
    return run


def test_servers_bind_loopback_and_a_second_start_is_harmless(stack):
    prefect_port = int(stack["prefect"].rsplit(":", 1)[1])
    mlflow_port = int(stack["mlflow"].rsplit(":", 1)[1])
    pids = {p.name: p.read_text() for p in stack["run_dir"].glob("*.pid")}
    again = servers.start(stack["run_dir"], prefect_port=prefect_port, mlflow_port=mlflow_port)
    assert [s.url for s in again] == [stack["prefect"], stack["mlflow"]]
    assert {p.name: p.read_text() for p in stack["run_dir"].glob("*.pid")} == pids
    assert all(url.startswith("http://127.0.0.1:") for url in (stack["prefect"], stack["mlflow"]))


def test_deployment_form_is_typed(stack):
    schema = stack["deployment"]["parameter_openapi_schema"]["properties"]
    assert "smoke" in schema["profile"]["enum"]
    assert "bridge+grpo" in schema["arms"]["items"]["enum"]
    assert {"seeds", "labeled_budget", "refresh"} <= set(schema)


def test_ui_run_logs_to_mlflow_and_links_both_ways(stack, triggered):
    mlflow = stack["mlflow"] + "/api/2.0/mlflow"
    experiment = http_json(f"{mlflow}/experiments/get-by-name?experiment_name=s2d-smoke")["experiment"]
    runs = http_json(f"{mlflow}/runs/search", {"experiment_ids": [experiment["experiment_id"]],
                                              "max_results": 500})["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    grid = [(r, t) for r, t in zip(runs, tags) if t.get("s2d.kind") == "grid"]
    assert len(grid) == 1 and grid[0][1]["prefect.flow_run_id"] == triggered["id"]
    nodes = [t for t in tags if t.get("s2d.kind") not in (None, "grid")]
    assert len(nodes) == 23 and all(t["prefect.flow_run_id"] == triggered["id"] for t in nodes)
    grid_run_id = grid[0][0]["info"]["run_id"]
    files = http_json(f"{mlflow}/artifacts/list?run_id={grid_run_id}&path=comparison")["files"]
    assert {"comparison/comparison.md", "comparison/comparison.png"} <= {f["path"] for f in files}
    links = http_json(f"{stack['prefect']}/api/artifacts/filter",
                     {"artifacts": {"flow_run_id": {"any_": [triggered["id"]]}}})
    link = next(a for a in links if a["key"] == "mlflow-grid-run")  # Prefect stores links as markdown
    assert f"({stack['mlflow']}/#/experiments/{experiment['experiment_id']}/runs/{grid_run_id})" in link["data"]


def test_both_uis_in_a_real_browser(stack, triggered):
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (see .ci/run)")
        pytest.skip("needs Debian's chromium: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=args)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{stack['prefect']}/deployments/deployment/{stack['deployment']['id']}/run")
        page.get_by_text("profile (Optional)").wait_for(timeout=60_000)
        page.get_by_text("arms (Optional)").wait_for(timeout=10_000)
        page.screenshot(path=SCREENSHOTS / "prefect-run-form.png", full_page=True)

        mlflow = stack["mlflow"]
        experiment = http_json(f"{mlflow}/api/2.0/mlflow/experiments/get-by-name?experiment_name=s2d-smoke")
        experiment_id = experiment["experiment"]["experiment_id"]
        page.goto(f"{mlflow}/#/experiments/{experiment_id}/runs")
        page.get_by_text("teacher-grpo [").first.wait_for(timeout=60_000)
        page.screenshot(path=SCREENSHOTS / "mlflow-runs.png", full_page=True)
        grid_run = _grid_run_id(mlflow, experiment_id)
        page.goto(f"{mlflow}/#/experiments/{experiment_id}/runs/{grid_run}/artifacts")
        page.get_by_text("grid allocation").first.wait_for(timeout=60_000)
        page.get_by_text("comparison", exact=True).click()
        page.get_by_text("comparison.md").click()
        page.get_by_text("bridge+replay").first.wait_for(timeout=30_000)  # the table, previewed
        page.screenshot(path=SCREENSHOTS / "mlflow-grid-comparison.png", full_page=True)
        browser.close()


def _grid_run_id(mlflow: str, experiment_id: str) -> str:
    query = {"experiment_ids": [experiment_id], "filter": "tags.`s2d.kind` = 'grid'"}
    return http_json(f"{mlflow}/api/2.0/mlflow/runs/search", query)["runs"][0]["info"]["run_id"]


def test_a_server_this_process_started_is_gone_once_it_ended(tmp_path):
    """An ended child stays a zombie until reaped: `stop` and `start` must not take it for a running server."""
    child = subprocess.Popen(["true"])
    (tmp_path / "prefect.pid").write_text(str(child.pid))
    time.sleep(0.5)  # ended, not reaped
    assert servers._pid(tmp_path, servers.servers()[0]) is None
    assert not (tmp_path / "prefect.pid").exists()


def test_stop_signals_both_servers_at_once_and_kills_one_that_ignores_sigterm(tmp_path, monkeypatch):
    """Each server's own shutdown overlaps the other's; one still up after the grace period is killed."""
    monkeypatch.setattr(servers, "STOP_GRACE_S", 3)
    on_sigterm = {"prefect": "lambda *_: (time.sleep(2), sys.exit(0))", "mlflow": "signal.SIG_IGN"}
    kids = {name: subprocess.Popen([sys.executable, "-c", "import signal, sys, time; "
                                    f"signal.signal(signal.SIGTERM, {handler}); print(flush=True); time.sleep(60)"],
                                   stdout=subprocess.PIPE, start_new_session=True)
            for name, handler in on_sigterm.items()}
    for name, kid in kids.items():
        kid.stdout.readline()  # its handler is in place
        (tmp_path / f"{name}.pid").write_text(str(kid.pid))
    start = time.monotonic()
    assert servers.stop(tmp_path) == ["prefect", "mlflow"]
    assert 3 <= time.monotonic() - start < 5  # one grace period, not a wait per server
    assert kids["prefect"].wait(5) == 0 and kids["mlflow"].wait(5) == -signal.SIGKILL
    assert not list(tmp_path.glob("*.pid"))
