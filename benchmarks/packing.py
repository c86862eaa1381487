"""Activation codec on a real bundle: compression within the accuracy budget, pack cost, entropy.

    python -m benchmarks.packing [--bundle build/fashion] [--data DIR] [--max-drop-pp 1] [--quick]

Bytes and accuracy per (split, bits) come from the bundle's profile.json (measured by
`python -m converter.profile` with the real head, codec and tail). Over the configurations whose
accuracy drop is within --max-drop-pp this reports:

* the "up to" compression: the largest float32 bytes / packed bytes (mean, header included);
* the configuration with the fewest packed bytes (what a bytes-minimising scheduler sends), as a
  ratio against the float32 activation at its split and against the JPEG q90 input;
* pack cost of that configuration, measured now: the real head runs on real frames (all its
  threads), pack() of those activations is timed on one core, both as the best of several runs,
  as MB/s of float32 input and as a share of the head latency timed in this run (the goal; the
  device profile's head time is shown too);
* packed body bytes against the order-0 entropy of the same quantized symbols;
* a per-split table (fewest bytes within the budget at each split).

The "up to" figure also looks at a second bundle of the same model when it is there
(--sparse-bundle, default build/fashion-sparse; `--build-sparse` converts and profiles it): the
sparse post-ReLU6 tensors (`SPARSE_SPLITS`), which no scheduler objective picks (more bytes than
the pooled vector for the same compute), but where a ratio against float32 is largest, as in
DynO's figure. Its profile measures bits 2, 3, 4, 8 and 32 on 300 test scenes.

Then the same codec figures on MobileNetV2 and ResNet50 activation shapes from the synthetic
generator of benchmarks/packing_layouts (no model there, hence no accuracy). Prints tables,
writes benchmarks/results/packing.json and a PASS/FAIL per goal.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks import _common as common
from benchmarks.packing_layouts import GROUPS, layer_model, sample
from splitinfer.litert import default_num_threads
from splitinfer import codec
from splitinfer.bundle.manifest import BundleError, Manifest, load_manifest
from splitinfer.bundle.profile import config_variant, row_drop

DEFAULT_OUT = common.RESULTS / "packing.json"
GOAL_UP_TO = 60.0  # x float32, best configuration within the budget
GOAL_FEWEST_VS_FLOAT32 = 10.0
GOAL_FEWEST_VS_JPEG = 10.0
GOAL_PACK_SHARE = 0.10  # of the split's head latency
QUICK_SYNTH_BITS = (2, 4, 8, 32)
DEFAULT_SPARSE_BUNDLE = Path("build/fashion-sparse")
#: Post-ReLU6 tensors of the default model, one per stage (80, 40, 10 and 5 px), and the pooled
#: vector for reference: sparse, so brotli gets most of their zeros for free.
SPARSE_SPLITS = ("block_1_expand_relu", "block_3_expand_relu", "block_13_expand_relu",
                 "block_16_depthwise_relu", "out_relu", "global_average_pooling2d")
SPARSE_PROFILE = ("--bits", "2,3,4,8,32")  # on the default 1,000 evaluation scenes


# --------------------------------------------------------------------------------------------
# Pure selection and math over profile rows
# --------------------------------------------------------------------------------------------


def eligible(configs: list[dict], max_drop_pp: float) -> list[dict]:
    """The configurations a scheduler may pick under the accuracy budget: by default it holds the
    budget to each drop's upper confidence bound (the point drop in profiles without bounds)."""
    return [c for c in configs if row_drop(c) <= max_drop_pp]


def vs_float32(c: dict) -> float | None:
    """float32 activation bytes / packed bytes (header included)."""
    return common.ratio(c.get("float32_bytes"), c["bytes_mean"])


def up_to(configs: list[dict]) -> dict | None:
    """The configuration with the largest ratio against float32 (DynO's "up to" figure)."""
    rated = [c for c in configs if vs_float32(c) is not None]
    return max(rated, key=vs_float32, default=None)


def build_sparse_bundle(bundle: Path, source: str = "zoo:fashion") -> None:
    """Convert `source` at SPARSE_SPLITS and profile it (progress bars; a few minutes)."""
    import subprocess

    py = sys.executable
    for cmd in ([py, "-m", "converter", source, "--out", str(bundle), "--splits", ",".join(SPARSE_SPLITS)],
                [py, "-m", "converter.profile", str(bundle), *SPARSE_PROFILE]):
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)


def extra_configs(bundle: Path | None, model_sha256: str) -> tuple[list[dict], str | None]:
    """Profiled configs of a second bundle of the same model, and why there are none."""
    if bundle is None or not (bundle / "profile.json").is_file():
        return [], (f"no {bundle}/profile.json: the up-to figure covers the main bundle only "
                    "(python -m benchmarks.packing --build-sparse adds the sparse splits)")
    profile = common.read_json(bundle / "profile.json")
    if profile.get("confidence") is None:
        return [], (f"{bundle}/profile.json has no confidence bounds (profile version "
                    f"{profile.get('version')}): ignored; --build-sparse profiles it again")
    if profile.get("model_sha256") != model_sha256:
        return [], f"{bundle} profiles another model (sha256 {str(profile.get('model_sha256'))[:12]}...): ignored"
    return [dict(c, bundle=str(bundle)) for c in profile["configs"]], None


def fewest_bytes(configs: list[dict]) -> dict | None:
    """What a scheduler minimising bytes sends (ties: fewer bits, then earlier in the list)."""
    return min(configs, key=lambda c: (c["bytes_mean"], c["bits"]), default=None)


def per_split(configs: list[dict], split_order: list[str], max_drop_pp: float,
              jpeg_bytes: float | None) -> list[dict]:
    """Per split: the fewest-bytes configuration within the budget (None fields when none is)."""
    ok = eligible(configs, max_drop_pp)
    float32 = {c["split"]: c.get("float32_bytes") for c in configs}
    rows = []
    for name in split_order:
        best = fewest_bytes([c for c in ok if c["split"] == name])
        row = {"split": name, "float32_bytes": float32.get(name), "bits": None, "params": None,
               "bytes_mean": None, "drop_pp": None, "drop_upper_pp": None, "agreement": None,
               "vs_float32": None, "vs_jpeg": None}
        if best is not None:
            row.update(bits=best["bits"], params=config_variant(best),
                       bytes_mean=best["bytes_mean"], drop_pp=best["drop_pp"],
                       drop_upper_pp=best.get("drop_upper_pp"),
                       agreement=best.get("agreement"), vs_float32=vs_float32(best),
                       vs_jpeg=common.ratio(jpeg_bytes, best["bytes_mean"]))
        rows.append(row)
    return rows


def config_summary(c: dict | None, jpeg_bytes: float | None, lossless_bytes: float | None) -> dict | None:
    """The fields of one configuration that the report quotes, with its ratios."""
    if c is None:
        return None
    return {
        "split": c["split"], "bits": c["bits"], "params": config_variant(c),
        "bytes_mean": c["bytes_mean"], "bytes_p95": c.get("bytes_p95"),
        "float32_bytes": c.get("float32_bytes"), "drop_pp": c["drop_pp"],
        "drop_upper_pp": c.get("drop_upper_pp"),
        "agreement": c.get("agreement"),
        "vs_float32": vs_float32(c),
        "vs_jpeg": common.ratio(jpeg_bytes, c["bytes_mean"]),
        "lossless_bytes_mean": lossless_bytes,
        "vs_lossless_float32_payload": common.ratio(lossless_bytes, c["bytes_mean"]),
    }


def lossless_bytes(configs: list[dict], split: str) -> float | None:
    """Mean bytes of the profiled bits=32 payload at `split` (brotli'd float32, header included)."""
    return next((c["bytes_mean"] for c in configs if c["split"] == split and c["bits"] == 32), None)


def entropy_bytes(symbols: np.ndarray) -> float:
    """What an ideal order-0 coder needs for these symbols, in bytes."""
    return codec.symbol_entropy(symbols) * symbols.size / 8


def mbps(nbytes: float, seconds: float) -> float:
    return nbytes / seconds / 1e6


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


def head_activations(bundle: Path, manifest: Manifest, split: str, frames: np.ndarray,
                     threads: int, repeats: int) -> tuple[list[np.ndarray], float]:
    """The real head's outputs for `frames`, and its latency now (ms; mean over the frames of the
    best of `repeats`, like `time_pack`)."""
    from edge_runtime.heads import HeadPool

    with HeadPool(bundle, manifest, [split], num_threads=threads, include_full=False) as pool:
        acts = [pool.run(split, f) for f in frames]  # also the warm-up
        # Best of `repeats`, as pack() is timed: the same statistic on both sides of the ratio.
        head_s = [common.best_of(lambda f=f: pool.run(split, f), repeats)[1] for f in frames]
    return acts, float(np.mean(head_s) * 1e3)


def split_ranges(bundle: Path, split: str, kind: str = "ranges") -> codec.ChannelRanges:
    from splitinfer.bundle.calibration import load_calibration

    found = load_calibration(bundle, load_manifest(bundle), kind).get(split)
    if found is None:
        raise BundleError(f"{bundle / 'calibration.json'} has no {kind} for {split!r}: "
                          "re-run python -m converter.profile")
    return found


def time_pack(acts: list[np.ndarray], pack_one, repeats: int) -> dict:
    """pack() of every activation on one core, best of `repeats` each."""
    with common.one_core() as core:
        pack_one(acts[0])  # warm-up (allocations, brotli tables)
        timed = [common.best_of(lambda a=a: pack_one(a), repeats) for a in acts]
    payloads = [p for p, _ in timed]
    seconds = [t for _, t in timed]
    raw = sum(a.nbytes for a in acts)
    return {
        "pinned_core": core,
        "frames": len(acts),
        "repeats": repeats,
        "float32_bytes": int(acts[0].nbytes),
        "pack_ms_mean": float(np.mean(seconds) * 1e3),
        "pack_ms_min": float(np.min(seconds) * 1e3),
        "pack_mbps": mbps(raw, sum(seconds)),
        "bytes_mean": float(np.mean([len(p) for p in payloads])),
        "header_bytes": codec.read_header(payloads[0]).header_length,
        "params_mode": codec.read_header(payloads[0]).params,
        "payloads": payloads,
    }


def entropy_check(acts: list[np.ndarray], payloads: list[bytes], bits: int,
                  variant: dict) -> dict | None:
    """Packed body bytes / order-0 entropy bytes of the same symbols (None for float payloads)."""
    if bits not in codec.QUANTIZED_BITS:
        return None
    ideal = [entropy_bytes(codec.quantize(a, bits, **variant).symbols) for a in acts]
    body = [codec.read_header(p).body_length for p in payloads]
    bps = [8 * e / a.size for e, a in zip(ideal, acts)]
    return {
        "entropy_bits_per_symbol": float(np.mean(bps)),
        "entropy_bytes_mean": float(np.mean(ideal)),
        "body_bytes_mean": float(np.mean(body)),
        "body_vs_entropy": common.ratio(sum(body), sum(ideal)),
        "note": "body = brotli(params section + symbols); below 1 means brotli uses spatial context",
    }


def measure_real(bundle: Path, manifest: Manifest, config: dict, frames: np.ndarray,
                 device: dict | None, repeats: int) -> dict:
    """Pack cost and entropy of `config` on real activations from the real head."""
    split = manifest.split(config["split"])
    bits = config["bits"]
    params = config_variant(config)
    calibrated = params in codec.REFERENCED_PARAMS
    ranges = split_ranges(bundle, split.name, "allocated" if params == "allocated" else "ranges") \
        if calibrated else None
    variant = codec.variant_kwargs(params, bits, ranges)
    # The head runs as the device profile timed it (all its threads); only pack() is pinned.
    threads = (device or {}).get("num_threads") or default_num_threads()
    acts, head_now = head_activations(bundle, manifest, split.name, frames, threads,
                                      max(repeats, 5))

    def pack_one(a: np.ndarray) -> bytes:  # exactly what the edge runtime sends
        return codec.pack(a, bits, model_sha256=manifest.model.sha256, split_index=split.index,
                            **variant)

    timing = time_pack(acts, pack_one, repeats)
    payloads = timing.pop("payloads")
    head_profile = (device or {}).get("heads_ms", {}).get(split.name)
    return {
        "split": split.name, "bits": bits, "calibrated": calibrated, **timing,
        "head_ms_device_profile": head_profile,
        "head_ms_this_run": head_now,
        "head_threads": threads,
        "pack_share_of_head": common.ratio(timing["pack_ms_mean"], head_profile),
        "pack_share_of_head_this_run": common.ratio(timing["pack_ms_mean"], head_now),
        "entropy": entropy_check(acts, payloads, bits, variant),
    }


def synthetic_rows(bits_list: tuple[int, ...], max_shapes: int | None, repeats: int) -> list[dict]:
    """Default pack() (per-frame ranges) of MobileNetV2/ResNet50-shaped synthetic activations."""
    rows = []
    with common.one_core():
        for g, (group, (shapes, kind)) in enumerate(GROUPS.items()):
            for i, shape in enumerate(shapes[:max_shapes]):
                x = sample(layer_model(shape, kind, seed=100 * g + i), np.random.default_rng(i))
                for bits in bits_list:
                    payload, t = common.best_of(lambda: codec.pack(x, bits), repeats)
                    rows.append({"group": group, "kind": kind, "shape": list(shape), "bits": bits,
                                 "float32_bytes": int(x.nbytes), "bytes": len(payload),
                                 "vs_float32": x.nbytes / len(payload), "pack_ms": t * 1e3,
                                 "pack_mbps": mbps(x.nbytes, t)})
    return rows


def synthetic_summary(rows: list[dict]) -> list[dict]:
    """Per (group, bits): summed bytes over the group's shapes, ratio and throughput."""
    out = []
    for key in dict.fromkeys((r["group"], r["bits"]) for r in rows):
        mine = [r for r in rows if (r["group"], r["bits"]) == key]
        raw = sum(r["float32_bytes"] for r in mine)
        packed = sum(r["bytes"] for r in mine)
        seconds = sum(r["pack_ms"] for r in mine) / 1e3
        out.append({"group": key[0], "bits": key[1], "shapes": len(mine), "float32_bytes": raw,
                    "bytes": packed, "vs_float32": raw / packed, "pack_mbps": mbps(raw, seconds)})
    return out


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def goals(up: dict | None, few: dict | None, real: dict | None) -> list[dict]:
    return [
        common.goal("up-to ratio vs float32", up and up["vs_float32"], ">=", GOAL_UP_TO, "x"),
        common.goal("fewest-bytes config vs float32", few and few["vs_float32"], ">=",
                    GOAL_FEWEST_VS_FLOAT32, "x"),
        common.goal("fewest-bytes config vs JPEG q90", few and few["vs_jpeg"], ">=",
                    GOAL_FEWEST_VS_JPEG, "x"),
        common.goal("pack time / head latency (same run)",
                    _percent(real and real["pack_share_of_head_this_run"]), "<=", 100 * GOAL_PACK_SHARE, "%"),
    ]


def _percent(share: float | None) -> float | None:
    return None if share is None else 100 * share


def print_report(profile: dict, up: dict | None, few: dict | None, rows: list[dict],
                 real: dict[str, dict], synth: list[dict], goal_rows: list[dict],
                 max_drop: float, up_main: dict | None = None) -> None:
    jpeg = profile.get("jpeg", {})
    print(f"float top-1 {common.fmt(profile.get('float_top1'), 4)} on {profile.get('dataset', {})};"
          f" JPEG q{jpeg.get('quality')} {common.fmt(jpeg.get('bytes_mean'), 0)} B mean")
    common.print_table(
        f"Per split: fewest bytes within {max_drop:g} pp (profile.json; bytes include the header)",
        ["split", "float32 B", "bits", "params", "bytes", "drop pp", "bound pp", "agree",
         "x float32", "x JPEG"],
        [[r["split"], r["float32_bytes"], r["bits"], r["params"], r["bytes_mean"], r["drop_pp"],
          r["drop_upper_pp"], r["agreement"], r["vs_float32"], r["vs_jpeg"]] for r in rows], digits=2)
    for label, c in (("up to (largest x float32)", up), ("up to, main bundle only", up_main),
                     ("fewest bytes", few)):
        if c is None:
            print(f"{label}: no configuration within {max_drop:g} pp")
            continue
        where = f" [{c['bundle']}]" if c.get("bundle") else ""
        print(f"{label}: {c['split']} @ {c['bits']} bits ({c['params']}){where}: "
              f"{c['bytes_mean']:.1f} B vs float32 {c['float32_bytes']} B = "
              f"{common.fmt(c['vs_float32'])}x, vs JPEG {common.fmt(c['vs_jpeg'])}x, vs lossless "
              f"float32 payload {common.fmt(c['vs_lossless_float32_payload'])}x; drop "
              f"{c['drop_pp']:.2f} pp")
    if real:
        print_pack_table(real)
    common.print_table(
        "Synthetic MobileNetV2 (160 px) / ResNet50 (224 px) activation shapes, default pack() "
        "(per-frame ranges; no model, so NO accuracy figures)",
        ["group", "bits", "shapes", "float32 B", "bytes", "x float32", "pack MB/s"],
        [[r["group"], r["bits"], r["shapes"], r["float32_bytes"], r["bytes"], r["vs_float32"],
          r["pack_mbps"]] for r in synth], digits=1)
    common.print_goals(goal_rows)


def print_pack_table(real: dict[str, dict]) -> None:
    """Measures (rows) at each measured configuration (columns)."""
    cols = list(real.values())
    e = [c["entropy"] or {} for c in cols]
    fields = [
        ("frames x best-of", [f"{c['frames']} x {c['repeats']}" for c in cols]),
        ("float32 bytes in", [c["float32_bytes"] for c in cols]),
        ("pack ms (mean of best)", [c["pack_ms_mean"] for c in cols]),
        ("pack MB/s of float32", [c["pack_mbps"] for c in cols]),
        ("packed bytes (this run)", [c["bytes_mean"] for c in cols]),
        ("header bytes", [c["header_bytes"] for c in cols]),
        ("params mode", [c["params_mode"] for c in cols]),
        ("head ms (device profile)", [c["head_ms_device_profile"] for c in cols]),
        ("pack / head % (device profile)", [_percent(c["pack_share_of_head"]) for c in cols]),
        ("head ms (this run)", [c["head_ms_this_run"] for c in cols]),
        ("pack / head % (this run)", [_percent(c["pack_share_of_head_this_run"]) for c in cols]),
        ("entropy bits/symbol", [x.get("entropy_bits_per_symbol") for x in e]),
        ("entropy bytes (order 0)", [x.get("entropy_bytes_mean") for x in e]),
        ("packed body bytes", [x.get("body_bytes_mean") for x in e]),
        ("body / order-0 entropy", [x.get("body_vs_entropy") for x in e]),
    ]
    names = [f"{k}: {c['split']}@{c['bits']}" for k, c in real.items()]
    core = cols[0]["pinned_core"]
    common.print_table(f"Pack cost on real activations of the real head (pack on core {core})",
                       ["measure", *names], [[f, *v] for f, v in fields], digits=3)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.packing",
                                description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=common.DEFAULT_BUNDLE)
    p.add_argument("--data", type=Path, help="images for a model other than the default one")
    p.add_argument("--max-drop-pp", type=float, default=1.0)
    p.add_argument("--frames", type=int, default=8, help="real frames to time pack() on")
    p.add_argument("--repeats", type=int, default=15, help="best-of count per timing")
    p.add_argument("--quick", action="store_true", help="a few seconds: fewer frames, repeats, shapes")
    p.add_argument("--sparse-bundle", type=Path, default=DEFAULT_SPARSE_BUNDLE,
                   help="a second bundle of the model whose configs count for the up-to figure")
    p.add_argument("--build-sparse", action="store_true",
                   help="convert and profile --sparse-bundle first if it has no profile")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.quick:
        args.frames, args.repeats = min(args.frames, 3), min(args.repeats, 3)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    problem = common.check_bundle(args.bundle)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    try:
        manifest = load_manifest(args.bundle)
        profile = common.read_json(args.bundle / "profile.json")
        device = common.read_json(args.bundle / "device-this-machine.json")
        configs = profile["configs"]
        ok = eligible(configs, args.max_drop_pp)
        jpeg_bytes = profile.get("jpeg", {}).get("bytes_mean")
        sparse_profile = args.sparse_bundle / "profile.json"
        if args.build_sparse and (not sparse_profile.is_file()
                                  or common.read_json(sparse_profile).get("confidence") is None):
            build_sparse_bundle(args.sparse_bundle)
        sparse, sparse_note = extra_configs(args.sparse_bundle, manifest.model.sha256)
        top_main = up_to(ok)
        up_main = top_main and config_summary(top_main, jpeg_bytes, lossless_bytes(configs, top_main["split"]))
        top = up_to(ok + eligible(sparse, args.max_drop_pp))
        pool = sparse if top is not None and "bundle" in top else configs
        up = top and dict(config_summary(top, jpeg_bytes, lossless_bytes(pool, top["split"])),
                          bundle=top.get("bundle", str(args.bundle)))
        best = fewest_bytes(ok)
        few = best and config_summary(best, jpeg_bytes, lossless_bytes(configs, best["split"]))
        order = [s.name for s in manifest.splits if s.head]
        rows = per_split(configs, order, args.max_drop_pp, jpeg_bytes)
        real: dict[str, dict] = {}
        if best is not None:
            frames, frames_source = common.load_frames(manifest.model.name,
                                                       manifest.model.input_shape, args.data,
                                                       args.frames)
            measured = [("fewest_bytes", best), ("up_to", top_main)]
            if top is not top_main:
                measured.append(("up_to_sparse", top))
            for key, c in measured:
                b = Path(c.get("bundle", args.bundle))
                same = next((m for m in real.values() if (m["bundle"], m["split"], m["bits"])
                             == (str(b), c["split"], c["bits"])), None)
                real[key] = same or dict(measure_real(
                    b, load_manifest(b), c, frames,
                    device if b == args.bundle else common.read_json(b / "device-this-machine.json"),
                    args.repeats), bundle=str(b))
                real[key]["frames_source"] = frames_source
    except (BundleError, ValueError, OSError, KeyError) as e:
        return common.fail(str(e).splitlines()[0])
    synth_bits = QUICK_SYNTH_BITS if args.quick else codec.BITS
    synth_rows = synthetic_rows(synth_bits, 2 if args.quick else None, 1 if args.quick else 3)
    synth = synthetic_summary(synth_rows)
    goal_rows = goals(up, few, real.get("fewest_bytes"))
    print_report(profile, up, few, rows, real, synth, goal_rows, args.max_drop_pp, up_main)
    if sparse_note:
        print(f"note: {sparse_note}")
    if device is None:
        print("note: no device-this-machine.json, so pack / head is N/A: run "
              f"python -m edge_runtime.profile {args.bundle}")
    elapsed = time.perf_counter() - t0
    common.write_results(args.out, {
        "benchmark": "packing",
        "bundle": str(args.bundle),
        "model": manifest.model.name,
        "model_sha256": manifest.model.sha256,
        "quick": args.quick,
        "max_drop_pp": args.max_drop_pp,
        "profile_dataset": profile.get("dataset"),
        "jpeg": profile.get("jpeg"),
        "configs_total": len(configs),
        "configs_eligible": len(ok),
        "up_to": up,
        "up_to_main_bundle": up_main,
        "sparse_bundle": str(args.sparse_bundle) if sparse else None,
        "sparse_configs": len(sparse),
        "fewest_bytes": few,
        "pack": real.get("fewest_bytes"),
        "pack_up_to": real.get("up_to"),
        "pack_up_to_sparse": real.get("up_to_sparse"),
        "per_split": rows,
        "synthetic": {"note": "synthetic activations (benchmarks.packing_layouts generator): "
                              "codec bytes and speed only, no accuracy",
                      "summary": synth, "rows": synth_rows},
        "goals": goal_rows,
        "elapsed_s": round(elapsed, 2),
    })
    print(f"\nwrote {args.out} in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
