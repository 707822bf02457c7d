"""A stop signal in a process without Prefect (a launched node in the node runtime) still stops cleanly."""

import os
import signal
import subprocess
import sys

STOPPED = """
import os, signal, sys, time
sys.modules["prefect"] = None  # the node runtime has no Prefect: importing it fails
from sparse2dense.execution import stopping
stopping.install("launched node")
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(30)
"""


def test_sigterm_without_prefect_exits_143_and_says_what_it_released(tmp_path):
    done = subprocess.run([sys.executable, "-c", STOPPED], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})
    assert done.returncode == 128 + signal.SIGTERM, done.stderr[-2000:]
    assert "launched node: stopped by SIGTERM: 0 launched node(s) killed, 0 MLflow run(s) marked KILLED" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []  # no MLflow run was open: no store created in the working directory
