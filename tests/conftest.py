"""Shared fixtures: a tiny residual CNN and its bundle, built once per test session."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from splitinfer.testing import build_tiny_model

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
TRACES = REPO.parent / "shared" / "traces"


def run_module(*args: str, timeout: float = 600, env=None) -> subprocess.CompletedProcess:
    """Run `python -m ...` from the repo root, as a user would."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
        timeout=timeout, env=full_env,
    )


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny.keras"
    build_tiny_model().save(path)
    return path


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_model_path) -> Path:
    """A converted bundle of the tiny model, with every distinct split (shared by many tests)."""
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    result = run_module("converter", str(tiny_model_path), "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    return out


def write_image_folder(folder: Path, n: int = 16, shape=(32, 32, 3), seed: int = 0) -> Path:
    """`n` random RGB PNGs plus a labels.csv (file,label): a user's image folder."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = ["file,label"]
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(folder / f"{i:02d}.png")
        rows.append(f"{i:02d}.png,{i % 10}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def copy_bundle(bundle: Path, dest: Path) -> Path:
    """A private copy of a shared bundle, for a test or fixture that writes into it."""
    import shutil

    shutil.copytree(bundle, dest)
    return dest


@pytest.fixture(scope="session")
def profiled_bundle(tiny_bundle, tmp_path_factory):
    """A copy of the tiny bundle with an offline profile (random labelled images) and a device
    profile (the shared tiny bundle itself is never written to)."""
    folder = write_image_folder(tmp_path_factory.mktemp("profile-images"), 16, seed=5)
    bundle = copy_bundle(tiny_bundle, tmp_path_factory.mktemp("profiled") / "tiny")
    r = run_module("converter.profile", str(bundle), "--data", str(folder), "--no-progress")
    assert r.returncode == 0, r.stderr
    r = run_module("edge_runtime.profile", str(bundle), "--no-progress", "--repeats", "3")
    assert r.returncode == 0, r.stderr
    return bundle, folder
