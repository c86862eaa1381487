"""python -m edge_runtime.profile BUNDLE: how long each head takes on this board.

The scheduler needs head latencies measured on the board that will run them (the offline profile
only knows accuracy and bytes). Median of repeated runs after warm-up, with the thread count the
runtime will use; written to `BUNDLE/device-<name>.json` (docs/FORMATS.md).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from edge_runtime.heads import FULL, HeadPool
from splitinfer.litert import default_num_threads
from splitinfer.bundle.device import DEVICE_PROFILE_VERSION
from splitinfer.bundle.files import write_json_atomic
from splitinfer.bundle.manifest import load_manifest
from splitinfer.errors import BundleError


def measure(pool: HeadPool, name: str, frame: np.ndarray, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        pool.run(name, frame)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pool.run(name, frame)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def profile_device(bundle: Path, *, device: str = "this-machine", num_threads: int | None = None,
                   repeats: int = 20, progress: bool = True) -> dict:
    manifest = load_manifest(bundle)
    threads = num_threads or default_num_threads()
    frame = np.random.default_rng(0).uniform(0, 255, manifest.model.input_shape).astype(np.float32)
    names = [s.name for s in manifest.splits if s.head]
    heads_ms = {}
    with HeadPool(bundle, manifest, names, num_threads=threads) as pool:
        items = names + [FULL]
        if progress:
            from tqdm import tqdm

            items = tqdm(items, desc="timing heads", unit="head", dynamic_ncols=True)
        for name in items:
            heads_ms[name] = measure(pool, name, frame, repeats)
        info = pool.info
    full_ms = heads_ms.pop(FULL)
    profile = {
        "version": DEVICE_PROFILE_VERSION,
        "device": device,
        "runtime": info.package,
        "delegate": info.delegate,
        "num_threads": threads,
        "model_sha256": manifest.model.sha256,
        "full_ms": full_ms,
        "heads_ms": {"input": 0.0, **heads_ms},
        "repeats": repeats,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json_atomic(bundle / f"device-{device}.json", profile)
    return profile


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_runtime.profile", description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--device", default="this-machine", help="name of this board (file name suffix)")
    p.add_argument("--threads", type=int, help="LiteRT threads (default: all cores)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        prof = profile_device(args.bundle, device=args.device, num_threads=args.threads,
                              repeats=args.repeats, progress=not args.no_progress)
    except (BundleError, ValueError, OSError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"{args.device}: full model {prof['full_ms']:.2f} ms on {prof['runtime']} "
          f"({prof['delegate']}, {prof['num_threads']} threads); "
          f"wrote {args.bundle / ('device-' + args.device + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
