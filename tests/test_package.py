"""The project as a package: the import rule between its parts, the wheel, the Python front
door from an installed copy, and the console script."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARTS = ("splitinfer", "converter", "edge_runtime", "cloud_runtime", "scheduler", "models", "demo",
         "benchmarks", "tests")
#: part -> parts it must never import (DESIGN.md's dependency rule). splitinfer's front door
#: (`api.py`, `cli.py`) reaches the parts lazily, inside functions, and is checked for that.
FORBIDDEN = {
    "splitinfer": set(PARTS) - {"splitinfer"},
    "cloud_runtime": {"edge_runtime", "scheduler", "converter", "tests", "benchmarks", "demo"},
    "scheduler": {"edge_runtime", "cloud_runtime", "converter", "tests", "benchmarks", "demo"},
    "edge_runtime": {"cloud_runtime", "converter", "tests", "benchmarks", "demo"},
    "converter": {"cloud_runtime", "scheduler", "tests", "benchmarks", "demo"},
    "models": {"edge_runtime", "cloud_runtime", "scheduler", "tests", "benchmarks", "demo"},
    "benchmarks": {"tests"},
    "demo": {"tests", "benchmarks"},
}
FRONT_DOOR = {"splitinfer/api.py", "splitinfer/cli.py", "splitinfer/__init__.py"}


def _source_copy(dest: Path) -> Path:
    """The tracked files (and untracked, not ignored ones) in a fresh folder: setuptools builds
    in ./build, which must not be the checkout's own build/ (bundles live there)."""
    import shutil

    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for rel in listed:
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    return dest


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Top-level package names a module imports (at module level only, if asked)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_the_dependency_rule_holds():
    broken = []
    for part, forbidden in FORBIDDEN.items():
        for path in sorted((REPO / part).rglob("*.py")):
            rel = str(path.relative_to(REPO))
            lazy_ok = rel in FRONT_DOOR
            bad = _imports(path, top_level_only=lazy_ok) & forbidden
            if bad:
                broken.append(f"{rel} imports {sorted(bad)}")
    assert not broken, "\n".join(broken)


def test_the_rule_checker_sees_a_violation(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("import os\nfrom edge_runtime.heads import HeadPool\ndef f():\n    import converter\n")
    assert _imports(bad, top_level_only=True) == {"os", "edge_runtime"}
    assert _imports(bad, top_level_only=False) == {"os", "edge_runtime", "converter"}


def test_one_definition_of_each_shared_name():
    """INPUT_SPLIT, FULL and the file versions live in splitinfer.bundle, nowhere else."""
    names = ("INPUT_SPLIT", "FULL", "PROFILE_VERSION", "DEVICE_PROFILE_VERSION", "MANIFEST_VERSION")
    where: dict[str, list[str]] = {n: [] for n in names}
    for part in PARTS[:-1]:
        for path in (REPO / part).rglob("*.py"):
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.Assign):
                    for t in node.targets:
                        if isinstance(t, ast.Name) and t.id in where:
                            where[t.id].append(str(path.relative_to(REPO)))
    assert all(len(v) == 1 and v[0].startswith("splitinfer/bundle/") for v in where.values()), where


@pytest.mark.slow
def test_an_installed_copy_converts_and_infers_from_python(tmp_path):
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(target), str(_source_copy(tmp_path / "src"))],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    code = """
import numpy as np, splitinfer as si
assert si.__file__.startswith(%r), si.__file__
from splitinfer.testing import build_tiny_model
bundle = si.convert(build_tiny_model(), "tiny")
with si.EdgeRuntime(bundle) as rt:
    result = rt.infer(np.full((32, 32, 3), 100, np.float32))
payload = si.pack(np.ones((4, 4, 8), np.float32), 8)
assert si.unpack(payload).shape == (4, 4, 8)
print("TOP1", result.top1, result.where)
""" % str(target)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin",
                                         "TF_CPP_MIN_LOG_LEVEL": "3", "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "TOP1" in r.stdout and "device" in r.stdout


def test_the_console_script_lists_commands_and_refuses_unknown_ones():
    from splitinfer.cli import COMMANDS, main

    assert main(["--help"]) == 0
    assert main(["nope"]) == 2
    for name, (module, _) in COMMANDS.items():
        assert (REPO / (module.replace(".", "/") + ".py")).is_file(), name


def test_the_wheel_builds(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(tmp_path), str(_source_copy(tmp_path / "src"))],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("splitinfer-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "splitinfer/codec/payload.py" in names and "models/fashion.weights.h5" in names
    assert not any(n.startswith("tests/") for n in names)
