"""Secrets stay out of everything the project writes; configuration is data, not code."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from sparse2dense.config import ConfigError, load_profile

from .conftest import PROFILE

TOKEN = "hf_s2dPLANTEDtoken0123456789"
PASSWORD = "s2d-planted-password-9876"


@pytest.mark.slow
def test_planted_credentials_never_reach_mlflow_prefect_or_the_artifacts(lone_grid):
    grid = lone_grid  # Prefect's database in the grid's root, where the search below reads it
    env = {"HF_TOKEN": TOKEN, "MLFLOW_TRACKING_PASSWORD": PASSWORD, "MLFLOW_TRACKING_USERNAME": "s2d"}
    done = grid.run("grid", "--profile", PROFILE, "--arms", "direct-grpo", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    leaks = subprocess.run(["grep", "-rlaF", "-e", TOKEN, "-e", PASSWORD, str(grid.root)], capture_output=True,
                           text=True).stdout.split()
    assert not [p for p in leaks if not p.endswith(".log")], leaks  # MLflow store, artifacts, Prefect's database
    assert TOKEN not in done.stdout + done.stderr and PASSWORD not in done.stdout + done.stderr


def test_profiles_load_yaml_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("extends: smoke\nname: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_profile(path)
    assert not Path("pwned").exists()


def test_remote_code_is_off_unless_a_profile_asks(tmp_path):
    """A checkpoint that ships its own modelling code is refused unless the profile sets trust_remote_code."""
    from sparse2dense.config import HardwareSpec
    from sparse2dense.models import load_model

    assert load_profile(PROFILE).models.trust_remote_code is False
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "s2d-custom",
                                                    "auto_map": {"AutoConfig": "code.Config",
                                                                 "AutoModelForCausalLM": "code.Model"}}))
    (folder / "code.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_model(folder, HardwareSpec(device="cpu"), trainable=False)


def test_an_unsafe_yaml_grid_is_refused_too(tmp_path):
    from sparse2dense.config import load_grid

    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"name": "g", "arms": {"a": "teacher"}}) + "x: !!python/name:os.system\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_grid(path)
