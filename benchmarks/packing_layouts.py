"""Measure the activation codec: layout x bit width, brotli quality, parameter cost, speed.

Run from the repository root:  python -m benchmarks.packing_layouts  [--quick]

Inputs are synthetic but shaped like real CNN activations (`LayerModel`): a spatially smooth
Gaussian field per channel with per-channel scale and offset, a few outlier channels, then
either ReLU6 / ReLU (sparse, non-negative, many exact zeros, some dead channels) or nothing
(post-BN pre-activation, roughly Gaussian). Shapes follow MobileNetV2 at 160x160 input and
ResNet50 at 224x224. Every number (bytes, ratios, MB/s) is measured in the same run; the table
is printed and written to benchmarks/results/packing_layouts.json. Single core, < 1 minute;
speeds are MB/s of float32 input, best of a few runs (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import brotli
import numpy as np


from splitinfer import codec

RESULTS = Path(__file__).resolve().parent / "results" / "packing_layouts.json"

MOBILENET_SHAPES = [(80, 80, 16), (40, 40, 24), (20, 20, 32), (10, 10, 64), (5, 5, 160), (5, 5, 1280)]
RESNET_SHAPES = [(56, 56, 256), (28, 28, 512), (14, 14, 1024), (7, 7, 2048)]
#: group name -> (shapes, activation kind)
GROUPS = {
    "mnv2-relu6": (MOBILENET_SHAPES, "relu6"),
    "mnv2-bn": (MOBILENET_SHAPES, "bn"),
    "r50-relu": (RESNET_SHAPES, "relu"),
    "r50-bn": (RESNET_SHAPES, "bn"),
}
#: late splits where per-channel parameters dominate: (name, shape, kind)
PARAM_CASES = [
    ("mnv2@96 block_16_project_BN", (3, 3, 112), "bn"),
    ("mnv2@96 out_relu", (3, 3, 1280), "relu6"),
    ("mnv2@160 block_16_project_BN", (5, 5, 160), "bn"),
    ("mnv2@160 out_relu", (5, 5, 1280), "relu6"),
    ("mnv2@160 block_13_expand_relu", (10, 10, 576), "relu6"),
    ("r50 conv5_block3_out", (7, 7, 2048), "relu"),
]
PARAM_BITS = (2, 4, 8)
SPEED_SHAPES = [(20, 20, 64), (5, 5, 1280), (56, 56, 256)]
SPEED_REPEATS = 25  # best-of for the small shapes (each call < 1 ms)
QUALITIES = (0, 1, 2, 4, 5)
CALIBRATION_SAMPLES = 32
CALIBRATION_PERCENTILE = 99.99


@dataclass(frozen=True)
class LayerModel:
    """Per-channel statistics of one layer; `sample` draws one input's activation from it."""

    shape: tuple[int, int, int]
    kind: str  # "relu6", "relu" or "bn"
    scale: np.ndarray  # (C,)
    offset: np.ndarray  # (C,) in units of the unit-variance field
    sigma: float  # spatial correlation length in pixels
    rho: float  # share of the smooth component in the variance


def layer_model(shape: tuple[int, int, int], kind: str, seed: int) -> LayerModel:
    """Channel statistics loosely matching trained CNNs (lognormal scales, dead/outlier channels)."""
    rng = np.random.default_rng(seed)
    c = shape[-1]
    scale = rng.lognormal(0.0, 0.6, c)
    scale[rng.random(c) < 0.05] *= 4.0  # outlier channels
    if kind == "bn":
        offset = rng.normal(0.0, 0.5, c)
    else:
        offset = rng.normal(-0.6, 0.8, c)
        offset[rng.random(c) < 0.1] = -8.0  # dead channels: exactly zero after the ReLU
    return LayerModel(shape=shape, kind=kind, scale=scale, offset=offset, sigma=1.2, rho=0.75)


def sample(model: LayerModel, rng: np.random.Generator) -> np.ndarray:
    """One activation: smooth Gaussian field -> per-channel affine -> the layer's nonlinearity."""
    field = _smooth_field(rng, model.shape, model.sigma, model.rho)
    pre = (field + model.offset) * model.scale
    if model.kind == "relu6":
        pre = np.clip(pre, 0.0, 6.0)
    elif model.kind == "relu":
        pre = np.maximum(pre, 0.0)
    return pre.astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one timing repeat, fewer shapes")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    repeats = 1 if args.quick else 2
    tensors = _tensors(quick=args.quick)
    raw_bytes = sum(x.nbytes for _, x in tensors)

    layouts = _layout_rows(tensors, repeats)
    best = _best_layouts(layouts)
    _print_layouts(layouts, best, raw_bytes)
    qualities = _quality_rows(tensors)
    _print_qualities(qualities)
    params = _param_rows()
    _print_params(params)
    speed = _speed_rows(repeats)
    _print_speed(speed)

    elapsed = time.perf_counter() - t0
    result = {
        "version": 1,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "brotli": brotli.__version__,
        "format_version": codec.FORMAT_VERSION,
        "quick": args.quick,
        "groups": {g: {"kind": k, "shapes": [list(s) for s in shp]} for g, (shp, k) in GROUPS.items()},
        "raw_float32_bytes": raw_bytes,
        "layouts": layouts,
        "best_layout": {str(b): v for b, v in best.items()},
        "default_layout": {str(b): v for b, v in codec.DEFAULT_LAYOUT.items()},
        "quality": qualities,
        "default_quality": {
            "large": {str(b): v for b, v in codec.DEFAULT_QUALITY.items()},
            "small": codec.SMALL_SECTION_QUALITY,
            "small_section_bytes": codec.SMALL_SECTION_BYTES,
        },
        "params": params,
        "speed": speed,
        "elapsed_s": round(elapsed, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    mismatched = [b for b in codec.BITS if best[b]["layout"] != codec.DEFAULT_LAYOUT[b]]
    print(f"\nwrote {args.out} in {elapsed:.1f} s")
    if mismatched:
        print(f"NOTE: DEFAULT_LAYOUT differs from this run's best for bits {mismatched}")
    return 0


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


def _tensors(quick: bool) -> list[tuple[str, np.ndarray]]:
    out = []
    for g, (shapes, kind) in GROUPS.items():
        for i, shape in enumerate(shapes[:3] if quick else shapes):
            model = layer_model(shape, kind, seed=1000 * len(out) + i)
            out.append((g, sample(model, np.random.default_rng(i))))
    return out


def _layout_rows(tensors: list[tuple[str, np.ndarray]], repeats: int) -> list[dict]:
    rows = []
    for bits in codec.BITS:
        allowed = codec.FLOAT_LAYOUTS if bits in codec.FLOAT_DTYPES else codec.LAYOUTS
        entropy = _entropy_bytes(tensors, bits)
        for layout in allowed:
            sizes, logs, t_pack, t_unpack = {}, 0.0, 0.0, 0.0
            for g, x in tensors:
                payload, tp = _timed(lambda: codec.pack(x, bits, layout=layout), repeats)
                y, tu = _timed(lambda: codec.unpack(payload), repeats)
                sizes[g] = sizes.get(g, 0) + len(payload)
                logs += math.log(len(payload))
                t_pack, t_unpack = t_pack + tp, t_unpack + tu
            raw = sum(x.nbytes for _, x in tensors)
            total = sum(sizes.values())
            rows.append({
                "bits": bits,
                "layout": layout,
                "bytes": sizes,
                "total_bytes": total,
                "ratio": raw / total,
                "log_bytes": logs,
                "entropy_bytes": entropy,
                "vs_entropy": total / entropy if entropy else None,
                "pack_mbps": raw / t_pack / 1e6,
                "unpack_mbps": raw / t_unpack / 1e6,
            })
    return rows


def _best_layouts(rows: list[dict]) -> dict[int, dict]:
    """Per bit width: the layout with the smallest geometric-mean payload over all tensors.

    (Geometric mean so that the big ResNet tensors do not decide alone; `by_total` is the
    winner by summed bytes, reported alongside.)
    """
    best = {}
    for bits in codec.BITS:
        mine = [r for r in rows if r["bits"] == bits]
        geo = min(mine, key=lambda r: r["log_bytes"])
        tot = min(mine, key=lambda r: r["total_bytes"])
        best[bits] = {"layout": geo["layout"], "by_total": tot["layout"]}
    return best


def _quality_rows(tensors: list[tuple[str, np.ndarray]]) -> list[dict]:
    """Payload bytes and pack time per brotli quality, split by section size (small/large tier)."""
    late = [
        sample(layer_model(shape, kind, 7000 + i), np.random.default_rng(1))
        for i, (_, shape, kind) in enumerate(PARAM_CASES)
    ]
    inputs = [x for _, x in tensors] + late
    rows = []
    for bits in codec.BITS:
        tiers: dict[str, list[np.ndarray]] = {"small": [], "large": []}
        for x in inputs:
            size = _section_bytes(x, bits)
            tiers["small" if size <= codec.SMALL_SECTION_BYTES else "large"].append(x)
        for tier, xs in tiers.items():
            if not xs:
                continue
            for q in QUALITIES:
                total, t = 0, 0.0
                for x in xs:
                    payload, dt = _timed(lambda: codec.pack(x, bits, quality=q), 1)
                    total += len(payload)
                    t += dt
                rows.append({
                    "bits": bits, "tier": tier, "tensors": len(xs), "quality": q, "total_bytes": total,
                    "pack_ms_per_tensor": 1e3 * t / len(xs),
                    "pack_mbps": sum(x.nbytes for x in xs) / t / 1e6,
                })
    return rows


def _section_bytes(x: np.ndarray, bits: int) -> int:
    """Uncompressed body size that `pack` hands to brotli for x at its defaults."""
    payload = codec.pack(x, bits)
    return len(brotli.decompress(payload[codec.read_header(payload).header_length :]))


def _param_rows() -> list[dict]:
    """Payload bytes and error per params mode at late splits (calibrated on other samples)."""
    rows = []
    for case, (name, shape, kind) in enumerate(PARAM_CASES):
        model = layer_model(shape, kind, seed=7000 + case)
        calib = [sample(model, np.random.default_rng(100 + i)) for i in range(CALIBRATION_SAMPLES)]
        ranges = codec.calibrate_ranges(calib, percentile=CALIBRATION_PERCENTILE)
        x = sample(model, np.random.default_rng(1))
        c = shape[-1]
        for bits in PARAM_BITS:
            auto = codec.read_header(codec.pack(x, bits)).params
            for mode in codec.QUANTIZED_PARAMS:
                r = ranges if mode == "calibrated" else None
                payload = codec.pack(x, bits, params=mode, ranges=r)
                header = codec.read_header(payload)
                y = codec.unpack(payload, ranges=r)
                data_only = _data_only_body(payload, header)
                rows.append({
                    "case": name,
                    "shape": list(shape),
                    "kind": kind,
                    "bits": bits,
                    "params": mode,
                    "auto_choice": auto,
                    "payload_bytes": len(payload),
                    "header_bytes": header.header_length,
                    "params_raw_bytes": codec.params_nbytes(mode, c),
                    "params_cost_bytes": header.body_length - data_only,
                    "data_bytes": data_only,
                    "nrmse": _nrmse(x, y),
                    "channel_nrmse": _channel_nrmse(x, y),
                    "clipped": _clipped_share(x, r),
                })
    return rows


def _data_only_body(payload: bytes, header: codec.Header) -> int:
    """Brotli bytes of the data section alone (same quality), to split a body into data and
    parameter cost."""
    raw = brotli.decompress(payload[header.header_length :])
    data = raw[codec.params_nbytes(header.params, header.channels) :]
    level = codec.default_quality(header.bits, len(raw))
    return len(brotli.compress(data, mode=codec.BROTLI_MODE, quality=level))


def _speed_rows(repeats: int) -> list[dict]:
    rows = []
    for shape in SPEED_SHAPES:
        x = sample(layer_model(shape, "relu6", seed=3), np.random.default_rng(3))
        for bits in codec.BITS:
            n = SPEED_REPEATS if x.nbytes < (1 << 20) else max(repeats, 3)
            payload, tp = _timed(lambda: codec.pack(x, bits), n)
            _, tu = _timed(lambda: codec.unpack(payload), n)
            rows.append({
                "shape": list(shape),
                "bits": bits,
                "bytes": len(payload),
                "pack_ms": tp * 1e3,
                "unpack_ms": tu * 1e3,
                "pack_mbps": x.nbytes / tp / 1e6,
                "unpack_mbps": x.nbytes / tu / 1e6,
            })
    return rows


# --------------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------------


def _print_layouts(rows: list[dict], best: dict[int, dict], raw: int) -> None:
    groups = list(GROUPS)
    print(f"Layouts: payload bytes per group (sum over its shapes), raw float32 = {raw} B")
    head = f"{'bits':>4} {'layout':<15}" + "".join(f"{g:>12}" for g in groups)
    print(head + f"{'ratio':>8}{'/H0':>7}{'pack MB/s':>11}{'unpack MB/s':>12}")
    for r in rows:
        mark = " *" if best[r["bits"]]["layout"] == r["layout"] else ""
        h0 = f"{r['vs_entropy']:.3f}" if r["vs_entropy"] else "-"
        print(
            f"{r['bits']:>4} {r['layout']:<15}"
            + "".join(f"{r['bytes'][g]:>12}" for g in groups)
            + f"{r['ratio']:>8.2f}{h0:>7}{r['pack_mbps']:>11.0f}{r['unpack_mbps']:>12.0f}{mark}"
        )
    print("* = smallest geometric-mean payload at that bit width; ratio = float32 bytes / payload;")
    print("best by geometric mean: " + ", ".join(f"{b}: {v['layout']}" for b, v in best.items()))
    print("best by total bytes:    " + ", ".join(f"{b}: {v['by_total']}" for b, v in best.items()))
    print("/H0 = payload / order-0 entropy of the symbols (below 1: brotli exploits spatial context)")


def _print_qualities(rows: list[dict]) -> None:
    print("\nbrotli quality at the default layout: total bytes / pack ms per tensor")
    print(
        f"small tier = body <= {codec.SMALL_SECTION_BYTES} B before compression (default "
        f"q{codec.SMALL_SECTION_QUALITY}); large tier default q{codec.DEFAULT_QUALITY[4]}"
    )
    print(f"{'bits':>4} {'tier':<6}{'n':>3} " + "".join(f"{'q' + str(q):>18}" for q in QUALITIES))
    for bits in codec.BITS:
        for tier in ("small", "large"):
            mine = {r["quality"]: r for r in rows if r["bits"] == bits and r["tier"] == tier}
            if not mine:
                continue
            n = mine[QUALITIES[0]]["tensors"]
            cells = "".join(
                f"{mine[q]['total_bytes']:>10}/{mine[q]['pack_ms_per_tensor']:>6.2f}  "
                for q in QUALITIES
            )
            print(f"{bits:>4} {tier:<6}{n:>3} {cells}")


def _print_params(rows: list[dict]) -> None:
    print("\nParameter cost at late splits (payload = header + brotli(params + data))")
    print(
        f"{'case':<30}{'bits':>5} {'params':<12}{'payload':>8}{'params B':>9}{'data B':>8}"
        f"{'nrmse':>8}{'ch-nrmse':>9}{'clip%':>7}  auto"
    )
    for r in rows:
        print(
            f"{r['case']:<30}{r['bits']:>5} {r['params']:<12}{r['payload_bytes']:>8}"
            f"{r['params_cost_bytes']:>9}{r['data_bytes']:>8}"
            f"{r['nrmse']:>8.4f}{r['channel_nrmse']:>9.4f}"
            f"{100 * r['clipped']:>7.3f}  {r['auto_choice']}"
        )
    print("params B = body bytes minus brotli(data alone); nrmse = RMSE / RMS(x);")
    print("ch-nrmse = mean over live channels of RMSE_c / std_c (what per-tensor costs small channels)")


def _print_speed(rows: list[dict]) -> None:
    print("\nSpeed at the defaults (relu6 activations, one core)")
    print(f"{'shape':<14}{'bits':>5}{'bytes':>9}{'pack ms':>9}{'MB/s':>7}{'unpack ms':>11}{'MB/s':>7}")
    for r in rows:
        print(
            f"{'x'.join(map(str, r['shape'])):<14}{r['bits']:>5}{r['bytes']:>9}{r['pack_ms']:>9.3f}"
            f"{r['pack_mbps']:>7.0f}{r['unpack_ms']:>11.3f}{r['unpack_mbps']:>7.0f}"
        )


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, int, int], sigma: float, rho: float
) -> np.ndarray:
    """Unit-variance field: share `rho` Gaussian-blurred (sigma px) noise, the rest white."""
    h, w, _ = shape
    white = rng.standard_normal(shape)
    fy = np.fft.fftfreq(h)[:, None, None]
    fx = np.fft.rfftfreq(w)[None, :, None]
    gain = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fy**2 + fx**2))
    blurred = np.fft.irfft2(np.fft.rfft2(white, axes=(0, 1)) * gain, s=(h, w), axes=(0, 1))
    # Normalise by the filter's power gain, not the sample's std: an empirical std would blow up
    # the per-sample mean of tiny maps (3x3) and make every sample look like a different layer.
    f2 = np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2
    full = np.exp(-2.0 * (np.pi * sigma) ** 2 * f2)
    blurred /= math.sqrt(float(np.mean(full**2)))
    return math.sqrt(rho) * blurred + math.sqrt(1.0 - rho) * white


def _entropy_bytes(tensors: list[tuple[str, np.ndarray]], bits: int) -> float:
    if bits in codec.FLOAT_DTYPES:
        return 0.0
    total = 0.0
    for _, x in tensors:
        q = codec.quantize(x, bits)
        total += codec.symbol_entropy(q.symbols) * q.symbols.size / 8
    return total


def _timed(fn, repeats: int):
    """(result, best wall seconds of `repeats` calls): the minimum filters out other jobs."""
    best, out = math.inf, None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, max(best, 1e-9)


def _clipped_share(x: np.ndarray, ranges: codec.ChannelRanges | None) -> float:
    if ranges is None:
        return 0.0
    return float(np.mean((x < ranges.lo) | (x > ranges.hi)))


def _nrmse(x: np.ndarray, y: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    return float(np.sqrt(np.mean((x.astype(np.float64) - y) ** 2))) / rms if rms else 0.0


def _channel_nrmse(x: np.ndarray, y: np.ndarray) -> float:
    c = x.shape[-1]
    xf, yf = x.reshape(-1, c).astype(np.float64), y.reshape(-1, c).astype(np.float64)
    std = xf.std(axis=0)
    live = std > 0
    if not live.any():
        return 0.0
    err = np.sqrt(np.mean((xf - yf) ** 2, axis=0))
    return float(np.mean(err[live] / std[live]))


if __name__ == "__main__":
    raise SystemExit(main())
