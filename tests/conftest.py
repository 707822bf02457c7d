"""Shared fixtures: the smoke profile's base models, built once per test session by stage 0."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smoke():
    from sparse2dense.config import load_profile

    return load_profile("smoke")


@pytest.fixture(scope="session")
def bases(smoke, tmp_path_factory):
    """Pretrained smoke teacher and student model folders."""
    from sparse2dense.stages.base import prepare_base

    root = tmp_path_factory.mktemp("bases")
    return {role: prepare_base(smoke, role, getattr(smoke.models, role), root / role, smoke.seed)["outputs"]["model"]
            for role in ("teacher", "student")}


def pytest_collection_modifyitems(session, config, items):
    """The GPU set's dry runs wait on the network for minutes: start them now, behind the CPU-bound tests."""
    if any(item.module.__name__.endswith("test_gpu_env") for item in items):
        from test_gpu_env import start_dry_runs

        config.gpu_dry_runs = start_dry_runs()
