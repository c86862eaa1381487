"""python -m edge_runtime.profile BUNDLE: how long each head takes on this board.

The scheduler needs head latencies measured on the board that will run them (the offline profile
only knows accuracy and bytes). Written to `BUNDLE/device-<name>.json` (docs/FORMATS.md).

Robust to a busy host: every head, the full model and the reference model are timed in
interleaved rounds (a shuffled order each round), so a burst of load hits them all alike, and
the median of each is kept. A prefix head cannot really be slower than the whole model; when one
measures so, it is reported and capped at the full model's time.

`--device CLASS` (an emulated class, see `--list-devices` of scheduler.simulate) profiles the
host as usual, into `device-this-machine.json`, and reports the class's emulated times: host time
x the class's reference time / the reference timed here in the same rounds. That ratio is what
the simulator, the live runtime and the demo use, so the emulation is the same on any host and
any thread count.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from edge_runtime.heads import FULL, HeadPool
from splitinfer.bundle.device import DEVICE_PROFILE_VERSION
from splitinfer.bundle.files import write_json_atomic
from splitinfer.bundle.manifest import load_manifest
from splitinfer.errors import BundleError
from splitinfer.litert import default_num_threads, load_interpreter, run_once
from splitinfer.reference import REFERENCE_INPUT_SHAPE, REFERENCE_NAME, reference_model_path

REFERENCE, REFERENCE_1T = "reference", "reference-1-thread"
#: Interleaved rounds by default. Measured with the default bundle on this host, the emulated
#: rpi4 full model at 2 threads over 1 thread read 1.08-1.15x in five pairs of runs at 30 rounds
#: and 1.10-1.13x at 200; 100 rounds (about 3 s here) kept eight pairs within 1.05-1.13x.
DEFAULT_REPEATS = 100
SLOWER_THAN_FULL = 1.05
BLOCK = 5  # timed calls in a row per model and round  # a prefix head above 105% of the full model is a timing artefact


def time_interleaved(runs: dict[str, Callable[[], object]], repeats: int, warmup: int = 3,
                     seed: int = 0, block: int = BLOCK,
                     progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """Median milliseconds of each callable over `repeats` timed calls, in rounds: each round
    visits every callable once, in a new order, for one untimed call then `block` timed ones.

    Rounds spread each model's samples over the whole run, so load that comes and goes hits all
    models alike. Blocks keep one interpreter hot while it is timed: switching interpreters on
    every call would time each against the previous one's thread pool, still spinning on the
    other core."""
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    names = list(runs)
    times: dict[str, list[float]] = {n: [] for n in names}
    rng = np.random.default_rng(seed)
    rounds = max(1, -(-repeats // block))
    for _ in range(rounds):
        for k in rng.permutation(len(names)):
            fn = runs[names[k]]
            fn()
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                times[names[k]].append(time.perf_counter() - t0)
        if progress is not None:
            progress(1)
    return {n: float(np.median(v) * 1e3) for n, v in times.items()}


def cap_at_full(heads_ms: dict[str, float], full_ms: float) -> tuple[dict[str, float], list[str]]:
    """Heads measured slower than the full model, capped at it, and a warning for each."""
    capped, warnings = {}, []
    for name, ms in heads_ms.items():
        if ms > full_ms * SLOWER_THAN_FULL:
            warnings.append(f"head {name} measured {ms:.2f} ms, above the full model's "
                            f"{full_ms:.2f} ms (a busy host?): capped at the full model")
            ms = full_ms
        capped[name] = ms
    return capped, warnings


def profile_device(bundle: Path, *, device: str = "this-machine", num_threads: int | None = None,
                   repeats: int = DEFAULT_REPEATS, progress: bool = True, reference: bool | None = None) -> dict:
    """Time every head; `reference=None` times the reference model when it can be had."""
    manifest = load_manifest(bundle)
    threads = num_threads or default_num_threads()
    frame = np.random.default_rng(0).uniform(0, 255, manifest.model.input_shape).astype(np.float32)
    names = [s.name for s in manifest.splits if s.head]
    ref_interpreter, ref_note = _reference_interpreter(threads, required=bool(reference),
                                                       wanted=reference is not False)
    ref_1t = (_reference_interpreter(1, required=False, wanted=True)[0]
              if ref_interpreter is not None and threads > 1 else None)
    with HeadPool(bundle, manifest, names, num_threads=threads) as pool:
        runs: dict[str, Callable[[], object]] = {n: (lambda n=n: pool.run(n, frame)) for n in names + [FULL]}
        if ref_interpreter is not None:
            x = np.random.default_rng(1).random(REFERENCE_INPUT_SHAPE, dtype=np.float32)
            runs[REFERENCE] = lambda: run_once(ref_interpreter, x)
            if ref_1t is not None:   # single-threaded work (packing, JPEG) scales by this one
                runs[REFERENCE_1T] = lambda: run_once(ref_1t, x)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=-(-repeats // BLOCK), desc=f"timing {len(runs)} models", unit="round",
                       dynamic_ncols=True)
        try:
            ms = time_interleaved(runs, repeats, progress=bar.update if bar else None)
        finally:
            if bar is not None:
                bar.close()
        info = pool.info
    full_ms = ms.pop(FULL)
    host_reference_ms = ms.pop(REFERENCE, None)
    host_reference_1t_ms = ms.pop(REFERENCE_1T, host_reference_ms if threads == 1 else None)
    heads_ms, warnings = cap_at_full(ms, full_ms)
    profile = {
        "version": DEVICE_PROFILE_VERSION,
        "device": device,
        "runtime": info.package,
        "delegate": info.delegate,
        "num_threads": threads,
        "model_sha256": manifest.model.sha256,
        "full_ms": full_ms,
        "heads_ms": {"input": 0.0, **heads_ms},
        "reference": REFERENCE_NAME if host_reference_ms is not None else None,
        "host_reference_ms": host_reference_ms,
        "host_reference_1t_ms": host_reference_1t_ms,
        "repeats": repeats,
        "timing": f"rounds of {BLOCK} calls per model in a shuffled order, median",
        "warnings": warnings + ([ref_note] if ref_note else []),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json_atomic(bundle / f"device-{device}.json", profile)
    return profile


def _reference_interpreter(threads: int, *, required: bool, wanted: bool):
    """The reference model's interpreter, or None with a note (a board without TensorFlow
    and without the cached model can still profile itself, just not emulate a class)."""
    if not wanted:
        return None, ""
    try:
        path = reference_model_path(build=True)
        return load_interpreter(path, num_threads=threads)[0], ""
    except (RuntimeError, ValueError, OSError) as e:
        if required:
            raise
        return None, f"reference model not timed: {str(e).splitlines()[0]}"


def emulate(profile: dict, device_class) -> dict:
    """The emulated class's times for a host profile (the one mechanism: DeviceClass.factor)."""
    factor = device_class.factor(profile.get("host_reference_ms"))
    return {"device_class": device_class.name, "factor": factor,
            "full_ms_emulated": profile["full_ms"] * factor,
            "heads_ms_emulated": {k: v * factor for k, v in profile["heads_ms"].items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_runtime.profile", description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--device", default="this-machine",
                   help="an emulated device class (profiles this host and reports the class), or "
                        "the name of this board (file name suffix)")
    p.add_argument("--threads", type=int, help="LiteRT threads (default: all cores)")
    p.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                   help="interleaved timing rounds (default %(default)s)")
    p.add_argument("--no-reference", action="store_true",
                   help="do not time the reference model (this board cannot then emulate a class)")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    from scheduler import devices

    board_class = devices.DEVICES.get(args.device)
    emulating = board_class is not None and board_class.reference_ms is not None
    if emulating and args.no_reference:
        print(f"error: --device {args.device} is emulated from the reference model: drop "
              f"--no-reference", file=sys.stderr)
        return 2
    name = "this-machine" if emulating else args.device
    try:
        prof = profile_device(args.bundle, device=name, num_threads=args.threads,
                              repeats=args.repeats, progress=not args.no_progress,
                              reference=True if emulating else (False if args.no_reference else None))
        emulated = emulate(prof, board_class) if emulating else {}
    except (BundleError, ValueError, RuntimeError, OSError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    for w in prof["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    path = args.bundle / f"device-{name}.json"
    ref = prof["host_reference_ms"]
    ref_text = f"; reference {ref:.2f} ms" if ref is not None else ""
    print(f"{name}: full model {prof['full_ms']:.2f} ms on {prof['runtime']} ({prof['delegate']}, "
          f"{prof['num_threads']} threads){ref_text}; wrote {path}")
    if emulating:
        print(f"{args.device} (emulated, x{emulated['factor']:.2f}): full model "
              f"{emulated['full_ms_emulated']:.1f} ms")
    if args.json:
        print(json.dumps({"device_class": args.device, "threads": prof["num_threads"],
                          "host_reference_ms": ref, "full_ms": prof["full_ms"],
                          "full_ms_emulated": emulated.get("full_ms_emulated"),
                          "factor": emulated.get("factor"), "warnings": prof["warnings"],
                          "path": str(path)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
