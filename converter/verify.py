"""python -m converter.profile BUNDLE --verify N: replay the profile's claims on unseen images.

Why: a profile's drop bounds are a promise about images it has not seen; this command checks the
promise on N images outside both its calibration and its evaluation sets, with the same head,
codec, calibration and tail the profiler used.

Verdicts, per configuration, comparing the replay's drop with the profile's upper bound:
- "ok": the replay's drop is at most the bound;
- "above": the replay's drop is above the bound but its own lower bound is not (the gap is
  within the replay's sampling noise: expected now and then for near-lossless configurations,
  whose bounds are a few tenths of a point);
- "FAIL": even the replay's lower bound is above the profile's upper bound, so the claim is
  wrong. Exit code 1. `--strict` also fails on "above".
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from converter.confidence import drop_interval
from splitinfer.bundle.files import write_json_atomic
from splitinfer.bundle.keras_tail import load_keras_tail
from splitinfer.bundle.profile import PROFILE_FILE, config_variant, load_profile
from splitinfer.encoding import Encoding
from splitinfer.errors import BundleError


@dataclass(frozen=True)
class Verdict:
    split: str
    bits: int
    variant: str
    claimed_drop_pp: float
    claimed_upper_pp: float
    bytes_claimed: float
    drop_pp: float
    lower_pp: float
    upper_pp: float
    bytes_mean: float
    verdict: str


def split_fronts(rows: Sequence[dict]) -> list[dict]:
    """Per split, the rows no other row of that split beats on both bytes and drop bound (the only
    ones an objective can pick: a split's configurations cost the same compute)."""
    from converter.pareto import pareto_front

    chosen = []
    for split in dict.fromkeys(r["split"] for r in rows):
        mine = [r for r in rows if r["split"] == split]
        front = pareto_front([(r["bytes_mean"], r["drop_upper_pp"]) for r in mine])
        chosen.extend(mine[i] for i in front)
    return chosen


def judge(claimed_upper_pp: float, measured_pp: float, measured_lower_pp: float) -> str:
    """The verdict of one configuration (see the module docstring)."""
    if measured_pp <= claimed_upper_pp:
        return "ok"
    return "FAIL" if measured_lower_pp > claimed_upper_pp else "above"


def verify_bundle(bundle: Path, data: str | None, count: int, which: str = "front",
                  progress: bool = True) -> tuple[list[Verdict], dict]:
    """Replay the chosen configurations of BUNDLE/profile.json on `count` unseen images."""
    from converter.datasets import fresh_dataset
    from converter.classify import classifier, predict, resolve_backend
    from converter.profile import measure_split
    from splitinfer.litert import HeadFiles
    from splitinfer.bundle.calibration import load_calibration
    from splitinfer.bundle.manifest import load_manifest
    from splitinfer.quiet import import_tensorflow

    manifest = load_manifest(bundle)
    load_profile(bundle / PROFILE_FILE)  # refuses a profile without bounds, with the fix
    profile = json.loads((bundle / PROFILE_FILE).read_text())
    rows = [r for r in profile["configs"] if r["split"] != "input"]
    chosen = split_fronts(rows) if which == "front" else rows
    dataset = fresh_dataset(manifest, profile.get("dataset") or {}, data, count)
    def keras_tail(split):  # TensorFlow only when a split is classified by its Keras tail
        import_tensorflow()
        return load_keras_tail(bundle / split.tail)

    backend = resolve_backend(manifest)
    full = classifier(bundle, manifest, manifest.split("input"), keras_tail, backend)
    float_pred = predict(full, dataset.images, 50)
    ranges = load_calibration(bundle, manifest)
    allocations = load_calibration(bundle, manifest, "allocated")
    splits = list(dict.fromkeys(r["split"] for r in chosen))
    verdicts = []
    heads = HeadFiles()
    bar = splits
    if progress:
        from tqdm import tqdm

        bar = tqdm(splits, desc="verifying splits", unit="split", dynamic_ncols=True)
    for name in bar:
        split = manifest.split(name)
        mine = [r for r in chosen if r["split"] == name]
        head = heads.head(bundle / split.head, split.head_signature)
        tail = classifier(bundle, manifest, split, keras_tail, backend)
        variants = [(int(r["bits"]), config_variant(r)) for r in mine]
        measured = measure_split(manifest, split, head, tail, ranges.get(name), dataset.images,
                                 variants, allocation=allocations.get(name))
        for r, key in zip(mine, variants):
            m = measured[key]
            d = drop_interval(float_pred, np.array(m["pred"]), dataset.labels)
            verdicts.append(Verdict(
                split=name, bits=key[0], variant=key[1], claimed_drop_pp=float(r["drop_pp"]),
                claimed_upper_pp=float(r["drop_upper_pp"]), bytes_claimed=float(r["bytes_mean"]),
                drop_pp=d.point_pp, lower_pp=d.lower_pp, upper_pp=d.upper_pp,
                bytes_mean=float(np.mean(m["bytes"])),
                verdict=judge(float(r["drop_upper_pp"]), d.point_pp, d.lower_pp)))
    return verdicts, dataset.description


def format_report(verdicts: Sequence[Verdict]) -> str:
    head = (f"{'split':<28} {'encoding':<12} {'variant':<10} {'bytes':>8} {'claimed':>8} "
            f"{'bound':>6} {'replay':>7} {'replay 90% interval':>20}  verdict")
    lines = [head]
    for v in verdicts:
        lines.append(f"{v.split[:28]:<28} {Encoding.of(v.bits).label:<12} {v.variant:<10} "
                     f"{v.bytes_mean:>8.0f} {v.claimed_drop_pp:>8.2f} {v.claimed_upper_pp:>6.2f} "
                     f"{v.drop_pp:>7.2f} {f'[{v.lower_pp:.2f}, {v.upper_pp:.2f}]':>20}  {v.verdict}")
    return "\n".join(lines)


def main_verify(args: argparse.Namespace) -> int:
    """The `--verify N` branch of `python -m converter.profile` (its arguments)."""
    from edge_runtime.images import ImageError

    if args.verify < 1:
        print("error: --verify needs N >= 1 images", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        verdicts, source = verify_bundle(args.bundle, args.data, args.verify, args.configs,
                                         progress=not args.no_progress)
    except (BundleError, ImageError, ValueError, OSError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(format_report(verdicts))
    counts = {k: sum(v.verdict == k for v in verdicts) for k in ("ok", "above", "FAIL")}
    failed = counts["FAIL"] + (counts["above"] if args.strict else 0)
    print(f"verified {len(verdicts)} configs on {source['n']} unseen images ({source['source']}) "
          f"in {time.perf_counter() - t0:.0f} s: {counts['ok']} ok, {counts['above']} above their "
          f"bound within the replay's noise, {counts['FAIL']} FAIL")
    if args.json:
        write_json_atomic(args.json, {"images": source, "strict": bool(args.strict),
                                      "configs": [asdict(v) for v in verdicts], "counts": counts})
    return 1 if failed else 0
