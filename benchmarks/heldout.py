"""python -m benchmarks.heldout: do the profile's accuracy claims hold on scenes it never saw?

The configurations the packing figures quote (fewest bytes, and largest ratio against float32,
within the accuracy budget held to each drop's upper bound) are replayed through the real
stack: `python -m edge_runtime --policy fixed` (LiteRT head, codec, HTTP) against a real
`python -m cloud_runtime`, on test scenes outside both the profile's calibration and evaluation
sets, written as JPEGs like any user's folder. The baseline is `--policy device` on the same
frames in the same run; the drop is paired, with its own bounds.

    python -m benchmarks.heldout [--bundle build/fashion] [--scenes 1000] [--skip 0] [--max-drop-pp 1]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import _common as common
from benchmarks.packing import eligible, fewest_bytes, up_to, vs_float32
from converter.confidence import drop_interval
from splitinfer.encoding import Encoding

DEFAULT_OUT = common.RESULTS / "heldout.json"


def chosen_configs(profile: dict, max_drop_pp: float) -> dict[str, dict]:
    """The quoted configurations: fewest bytes and largest ratio vs float32 within the budget."""
    ok = eligible([c for c in profile["configs"] if c["split"] != "input"], max_drop_pp)
    picks = {"fewest bytes": fewest_bytes(ok), "largest ratio vs float32": up_to(ok)}
    return {k: c for k, c in picks.items() if c is not None}


def first_unseen_scene(profile: dict) -> int:
    """The first test scene past the profile's evaluation range (calibration uses 'val')."""
    evaluation = (profile.get("dataset") or {}).get("evaluation") or {}
    if evaluation.get("scenes") != "test":
        raise ValueError("the profile was not measured on the default test scenes: "
                         "re-run python -m converter.profile on the bundle")
    return int(evaluation["first"]) + int(evaluation["count"])


def run_edge(bundle: Path, images: Path, cloud: str | None, policy: str, out: Path,
             split: str | None = None, bits: int | None = None) -> list[dict]:
    """One real edge run over the folder; its per-frame JSON lines (summary line dropped)."""
    cmd = [sys.executable, "-m", "edge_runtime", "--bundle", str(bundle), "--images", str(images),
           "--policy", policy, "--jsonl", str(out)]
    if cloud:
        cmd += ["--cloud", cloud]
    if split is not None:
        cmd += ["--split", split, "--bits", str(bits)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=common.ROOT)
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    frames = sorted((r for r in rows if "frame" in r), key=lambda r: r["frame"])  # pipelined: any order
    if [r["frame"] for r in frames] != list(range(len(frames))):
        raise ValueError(f"{out}: the edge did not answer every frame exactly once")
    return frames


def replay(bundle: Path, scenes: int, max_drop_pp: float, work: Path, skip: int = 0) -> dict:
    from models import scenes as scene_maker
    from splitinfer.testing import CloudProcess

    profile = json.loads((bundle / "profile.json").read_text())
    picks = chosen_configs(profile, max_drop_pp)
    first = first_unseen_scene(profile) + skip
    folder = work / "scenes"
    scene_maker.write_jpegs("test", first, scenes, folder)
    device = run_edge(bundle, folder, None, "device", work / "device.jsonl")
    labels = np.array([r["label"] for r in device])
    device_pred = np.array([r["top1"] for r in device])
    results = []
    cloud = CloudProcess(bundle, work / "cloud.log")
    cloud.start()
    try:
        for why, c in picks.items():
            print(f"replaying {why}: {c['split']} @ {Encoding.of(c['bits']).label}", flush=True)
            rows = run_edge(bundle, folder, cloud.url, "fixed", work / f"{c['split']}-{c['bits']}.jsonl",
                            c["split"], c["bits"])
            pred = np.array([r["top1"] for r in rows])
            d = drop_interval(device_pred, pred, labels)
            results.append({
                "pick": why, "split": c["split"], "bits": c["bits"],
                "encoding": Encoding.of(c["bits"]).label, "variant": c.get("variant"),
                "claimed_drop_pp": c["drop_pp"], "claimed_upper_pp": c.get("drop_upper_pp"),
                "bytes_claimed": c["bytes_mean"], "vs_float32": vs_float32(c),
                "frames": len(rows), "split_frames": sum(r["where"] == "split" for r in rows),
                "fallbacks": sum(bool(r["fallback"]) for r in rows),
                "bytes_sent": float(np.mean([r["bytes"] for r in rows])),
                "top1": float(np.mean(pred == labels)), "drop_pp": d.point_pp,
                "drop_lower_pp": d.lower_pp, "drop_upper_pp": d.upper_pp,
                "holds": d.point_pp <= max_drop_pp})
    finally:
        cloud.stop()
    return {"bundle": str(bundle), "scenes": {"split": "test", "first": first, "count": scenes},
            "profile_images": profile["dataset"].get("n"), "max_drop_pp": max_drop_pp,
            "device_top1": float(np.mean(device_pred == labels)), "results": results}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.heldout", description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=common.DEFAULT_BUNDLE)
    ap.add_argument("--scenes", type=int, default=1000, help="held-out test scenes to replay")
    ap.add_argument("--skip", type=int, default=0,
                    help="start this many scenes past the profile's evaluation range (another sample)")
    ap.add_argument("--max-drop-pp", type=float, default=1.0)
    ap.add_argument("--json", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    problem = common.check_bundle(args.bundle)
    if problem:
        return common.fail(problem)
    with tempfile.TemporaryDirectory(prefix="heldout-") as tmp:
        try:
            body = replay(args.bundle, args.scenes, args.max_drop_pp, Path(tmp), args.skip)
        except (ValueError, subprocess.CalledProcessError) as e:
            return common.fail(str(e).splitlines()[0])
    common.print_table(
        f"Held-out replay: test scenes {body['scenes']['first']}..{body['scenes']['first'] + args.scenes - 1} "
        f"through the real edge and cloud; device-only top-1 {body['device_top1']:.4f}",
        ["pick", "split", "encoding", "bytes", "x float32", "claimed", "bound", "replayed",
         "90% interval", "frames split", "holds"],
        [[r["pick"], r["split"], r["encoding"], r["bytes_sent"], r["vs_float32"], r["claimed_drop_pp"],
          r["claimed_upper_pp"], r["drop_pp"], f"[{r['drop_lower_pp']:.2f}, {r['drop_upper_pp']:.2f}]",
          f"{r['split_frames']}/{r['frames']}", "yes" if r["holds"] else "NO"]
         for r in body["results"]], digits=2)
    path = common.write_results(args.json, body)
    print(f"wrote {path}")
    return 0 if all(r["holds"] for r in body["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
