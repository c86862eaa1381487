"""The board install has no TensorFlow: everything the edge imports must work without it."""
import subprocess
import sys

from tests.conftest import REPO

BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorflow', 'keras', 'tf_keras'):
            raise ImportError(f'{name} is blocked: the edge must not need it')
sys.meta_path.insert(0, Block())
"""


def run_without_tensorflow(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + code], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_blocker_really_blocks():
    result = run_without_tensorflow("import tensorflow")
    assert result.returncode != 0 and "blocked" in result.stderr


def test_edge_runtime_imports_without_tensorflow():
    code = """
import importlib, pkgutil, sys
import edge_runtime
names = [m.name for m in pkgutil.iter_modules(edge_runtime.__path__) if not m.name.startswith('_') or m.name == '__main__']
for name in names:
    if name == '__main__':
        continue
    importlib.import_module('edge_runtime.' + name)
from splitinfer.litert import interpreter_class
cls, package = interpreter_class()
assert package == 'ai_edge_litert', package
assert not any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules)
print('ok', len(names))
"""
    result = run_without_tensorflow(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


def test_edge_requirements_have_no_tensorflow():
    text = (REPO / "requirements-edge.txt").read_text().lower()
    assert "tensorflow" not in text.replace("no tensorflow", "") and "keras" not in text
    assert "ai-edge-litert" in text
