"""Helpers shared by the benchmarks: bundle checks, frames, timing, goals, tables, JSON results.

Kept free of TensorFlow (only numpy and edge_runtime), so a benchmark that runs on a board can
import it.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_BUNDLE = Path("build/fashion")
DEFAULT_MODEL = "fashion"
RESULTS_VERSION = 1
BUILD_HINT = (
    "python -m converter zoo:fashion --out build/fashion --max-splits 12 && "
    "python -m converter.profile build/fashion && python -m edge_runtime.profile build/fashion"
)


# --------------------------------------------------------------------------------------------
# Bundle and frames
# --------------------------------------------------------------------------------------------


def check_bundle(bundle: Path, *, need_device: bool = False) -> str | None:
    """None when the bundle has what a benchmark reads, else a message saying how to build it."""
    missing = [n for n in ("manifest.json", "profile.json") if not (bundle / n).is_file()]
    if need_device and not (bundle / "device-this-machine.json").is_file():
        missing.append("device-this-machine.json")
    if not missing:
        return None
    return (f"bundle {bundle} lacks {', '.join(missing)} (not built or not profiled yet).\n"
            f"Build it with:\n  {BUILD_HINT}\n(for another bundle, run the steps that are missing "
            f"on it, with --data DIR for converter.profile)")


def read_json(path: Path) -> dict | None:
    """A JSON file's content, or None when the file does not exist."""
    return json.loads(path.read_text()) if path.is_file() else None


def load_frames(model_name: str, input_shape: Sequence[int], data: Path | None, n: int,
                *, allow_random: bool = False) -> tuple[np.ndarray, str]:
    """n real frames (float32 0..255) and where they came from.

    The default model has its own scenes; another model needs `data` (a folder of images). With
    `allow_random`, deterministic uniform noise stands in (fine for timing, not for bytes).
    """
    if data is not None:
        from edge_runtime.images import list_images, load_image

        entries = list_images(data)[:n]
        frames = np.stack([load_image(e.path, tuple(input_shape)) for e in entries])
        return frames.astype(np.float32), f"{data} ({len(entries)} images)"
    if model_name == DEFAULT_MODEL:
        from models import scenes

        images, _ = scenes.make_scenes("test", range(n))
        return images.astype(np.float32), f"models.scenes test 0..{n - 1}"
    if allow_random:
        rng = np.random.default_rng(0)
        frames = rng.uniform(0, 255, (n, *input_shape)).astype(np.float32)
        return frames, f"uniform noise ({n} frames; model {model_name!r} has no default data)"
    raise ValueError(f"model {model_name!r} has no default data set: pass --data DIR (images, "
                     "e.g. the folder converter.profile was run on)")


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def best_of(fn: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    """(last result, fastest wall seconds of `repeats` calls): the minimum filters out other jobs."""
    best, out = math.inf, None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, max(best, 1e-9)


@contextlib.contextmanager
def one_core() -> Iterator[int | None]:
    """Pin this thread (and threads it starts) to one core for the block; yields the core or None.

    Restores the previous affinity afterwards, so a test that calls a benchmark's main() keeps
    all its cores.
    """
    try:
        before = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        yield None
        return
    core = max(before)  # the last core: core 0 usually gets the interrupts
    try:
        os.sched_setaffinity(0, {core})
    except OSError:
        yield None
        return
    try:
        yield core
    finally:
        os.sched_setaffinity(0, before)


# --------------------------------------------------------------------------------------------
# Pure math
# --------------------------------------------------------------------------------------------


def ratio(num: float | None, den: float | None) -> float | None:
    """num / den, or None when either is missing or den is not positive."""
    if num is None or den is None or den <= 0:
        return None
    return float(num) / float(den)


def goal(name: str, value: float | None, op: str, target: float, unit: str = "") -> dict:
    """A goal check as a JSON-ready dict; status PASS, FAIL or N/A (value not measured)."""
    checks = {">=": lambda v: v >= target, "<=": lambda v: v <= target, "<": lambda v: v < target}
    if op not in checks:
        raise ValueError(f"Expected op in {list(checks)}. Received: op={op!r}")
    status = "N/A" if value is None else ("PASS" if checks[op](value) else "FAIL")
    return {"goal": name, "value": value, "target": f"{op} {target:g}{unit}", "status": status}


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 2) -> str:
    """Table cell: floats to `digits` decimals, None as '-', the rest as str."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return str(value)
        return f"{value:.{digits}f}"
    return str(value)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]],
                digits: int = 2) -> None:
    """A plain aligned table: first column left-aligned, the others right-aligned."""
    cells = [[fmt(v, digits) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths)))

    print(f"\n{title}")
    print(line(headers))
    print(line(["-" * w for w in widths]))
    for r in cells:
        print(line(r))


def print_goals(goals: Sequence[dict]) -> None:
    print_table("Goals", ["goal", "value", "target", "status"],
                [[g["goal"], g["value"], g["target"], g["status"]] for g in goals])


def write_results(path: Path, body: dict) -> Path:
    """Write `body` with the run's environment (versions, platform, cores, load average at the
    end) as JSON (parent folders created)."""
    doc = {
        "version": RESULTS_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "platform": platform.platform(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        **body,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=_json_default) + "\n")
    tmp.replace(path)
    return path


def fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
