"""Device and cloud classes: what a board (or the cloud) would take for what we time here.

Device classes are host-independent. Each is defined by one published latency of the reference
model (MobileNetV2 1.0, 224x224, float32; splitinfer/reference.py) on that board. The device
profile times the same reference on the host, in the same run and at the same thread count as
the heads, so

    board_ms = host_ms * class.reference_ms / profile.host_reference_ms

is the same on a fast or a slow host (`DeviceClass.factor`). The simulator, the live edge
runtime (`--device`) and the demo all scale through this one function.

Relative speeds come from one source, the ncnn benchmark README (github.com/Tencent/ncnn,
benchmark/README.md, read at commit a4d2ea1d; float32 `mobilenet_v2` avg, CPU only, the run with
the most threads the section prints), anchored to one LiteRT figure: the XNNPACK README's
MobileNet v2 1.0X on a Raspberry Pi 4, 44 ms (github.com/google/XNNPACK, README.md, "Raspberry
Pi" table, multi-threaded). XNNPACK is LiteRT's CPU backend, so the anchor is like for like:

    class.reference_ms = 44 ms * ncnn_ms(board) / ncnn_ms(Raspberry Pi 4) (61.88 ms)

The same sections give ResNet-50 (`resnet50`); it is recorded with each class because heavy and
light networks do not scale alike across boards (a Snapdragon 660 is 1.8x a Pi 4 on MobileNetV2
but 1.0x on ResNet-50), but the scaling uses the MobileNetV2 reference for every model.

Cloud classes are still relative to this machine's tail timings (see CloudClass).
"""
from __future__ import annotations

from dataclasses import dataclass

from splitinfer.reference import REFERENCE_FLOPS, REFERENCE_NAME

# This machine's figures for the cloud classes and for FLOPs-based estimates (LiteRT via
# ai_edge_litert 2.3, XNNPACK, float32, batch 1, median of 100 runs; measured 2026-12-01 and
# 2026-12-06 on the 2-core development machine):
#   keras.applications.MobileNetV2(weights=None), 224x224, num_threads=2: 5.18 ms
#   keras.applications.ResNet50(weights=None), LiteRT, num_threads=2:      38.3 ms
#   keras.applications.ResNet50(weights=None), TensorFlow 2.21 tf.function, batch 1: 131 ms
THIS_MACHINE_MOBILENET_V2_MS = 5.18
THIS_MACHINE_TF_RESNET50_MS = 131.0
THIS_MACHINE_LITERT_RESNET50_MS = 38.3
# Sustained LiteRT FLOP/s for bundles without a device profile. Emulated classes cancel it out
# (the reference is costed at the same rate), so it only matters for `this-machine`.
THIS_MACHINE_FLOPS_PER_S = REFERENCE_FLOPS / (THIS_MACHINE_MOBILENET_V2_MS / 1e3)


class EmulationError(ValueError):
    """A device class cannot be emulated from this device profile."""


@dataclass(frozen=True)
class DeviceClass:
    """An edge board, defined by the reference model's latency on it."""

    name: str
    description: str
    reference_ms: float | None    # MobileNetV2 1.0 224 float32 on the board; None: the host itself
    source: str
    resnet50_ms: float | None = None  # the same source's ResNet-50, LiteRT-anchored (documentation)
    reference_1t_ms: float | None = None  # the reference on one core: scales single-threaded work

    def factor(self, host_reference_ms: float | None) -> float:
        """Board time / host time, given the reference timed on the host with the heads."""
        if self.reference_ms is None:
            return 1.0
        if host_reference_ms is None or not host_reference_ms > 0:
            raise EmulationError(
                f"device class {self.name!r} is emulated by scaling with the reference model "
                f"timed on this host, and this device profile has none: re-run `python -m "
                f"edge_runtime.profile BUNDLE` to measure it")
        return self.reference_ms / host_reference_ms

    def serial_factor(self, host_reference_1t_ms: float | None,
                      host_reference_ms: float | None) -> float:
        """Board time / host time for single-threaded work (packing, JPEG encoding): the
        reference on one core on both sides. Falls back to `factor` when either is unknown."""
        if self.reference_ms is None:
            return 1.0
        if self.reference_1t_ms is None or not (host_reference_1t_ms or 0) > 0:
            return self.factor(host_reference_ms)
        return self.reference_1t_ms / host_reference_1t_ms


# --- Edge devices -------------------------------------------------------------------------------

XNNPACK_RPI4_MOBILENET_V2_MS = 44.0   # the LiteRT anchor
NCNN_RPI4_MOBILENET_V2_MS = 61.88     # ncnn, Raspberry Pi 4 Model B (Cortex-A72 1.8 GHz x 4), 4 threads
LITERT_PER_NCNN = XNNPACK_RPI4_MOBILENET_V2_MS / NCNN_RPI4_MOBILENET_V2_MS


def _ncnn(name: str, description: str, section: str, threads: int, mobilenet_v2_ms: float,
          resnet50_ms: float, mobilenet_v2_1t_ms: float, note: str = "") -> DeviceClass:
    return DeviceClass(
        name, description, round(mobilenet_v2_ms * LITERT_PER_NCNN, 2),
        f"ncnn benchmark README, \"{section}\", {threads} threads: mobilenet_v2 {mobilenet_v2_ms} ms "
        f"(resnet50 {resnet50_ms} ms; 1 thread: mobilenet_v2 {mobilenet_v2_1t_ms} ms) x "
        f"{XNNPACK_RPI4_MOBILENET_V2_MS}/{NCNN_RPI4_MOBILENET_V2_MS} (XNNPACK README Pi 4 anchor){note}",
        round(resnet50_ms * LITERT_PER_NCNN, 1), round(mobilenet_v2_1t_ms * LITERT_PER_NCNN, 2))


DEVICES: dict[str, DeviceClass] = {
    d.name: d
    for d in (
        DeviceClass("this-machine", "the host itself (no scaling)", None, "identity"),
        _ncnn("pi-zero2", "Raspberry Pi Zero 2 W class (4x Cortex-A53 @ 1.0 GHz)",
              "Raspberry Pi Zero 2 W Broadcom BCM2710A1, Cortex-A53 (ARMv8) (1.0GHz x 4)", 4,
              147.39, 782.63, 274.23),
        _ncnn("pi3", "Raspberry Pi 3 Model B+ class (4x Cortex-A53 @ 1.4 GHz)",
              "Raspberry Pi 3 Model B+ Broadcom BCM2837B0, Cortex-A53 (ARMv8) (1.4GHz x 4)", 4,
              111.68, 587.42, 158.80),
        _ncnn("phone-low", "low-end phone class (Snapdragon 410, 4x Cortex-A53 @ 1.2 GHz)",
              "Qualcomm MSM8916 Snapdragon 410 (Cortex-A53 1.2GHz x 4)", 4, 82.00, 393.71, 169.06),
        _ncnn("rpi4", "Raspberry Pi 4 class board (4x Cortex-A72)",
              "Raspberry Pi 4 Model B Broadcom BCM2711B0, Cortex-A72 (ARMv8) (1.8GHz x 4)", 4,
              61.88, 262.83, 93.48, "; the anchor itself, 44 ms"),
        _ncnn("phone-mid", "mid-range phone class (Snapdragon 660, 8x Kryo 260)",
              "Qualcomm SDM660 Snapdragon 660 (Kyro260 2.2GHz x 4 + Kyro260 1.84GHz x 4 + "
              "Adreno 512)", 8, 34.54, 266.59, 76.38),
        _ncnn("jetson-nano", "NVIDIA Jetson Nano, CPU only (4x Cortex-A57)", "NVIDIA Jetson Nano",
              4, 33.83, 204.08, 93.99),
        _ncnn("rpi5", "Raspberry Pi 5 class board (4x Cortex-A76 @ 2.4 GHz)",
              "Raspberry Pi 5 Broadcom BCM2712, Cortex-A76 (ARMv8) (2.4GHz x 4)", 4, 10.52, 46.21, 16.38,
              "; 5.9x a Pi 4 here, against the 2-3x Raspberry Pi Ltd announced: a TFLite "
              "cross-check (github.com/aallan/benchmarking-ml-on-the-edge) measured 4.8x"),
        _ncnn("xavier", "NVIDIA Jetson AGX Xavier, CPU only (8x Carmel @ 2.2 GHz; DynO's client)",
              "NVIDIA Jetson AGX Xavier (Carmel 2.2 GHz x 8 + Volta Tensor Cores 64)", 8,
              8.78, 29.41, 24.68),
        _ncnn("phone-high", "high-end phone class (Snapdragon 855+)",
              "Qualcomm SM8150-AC Snapdragon 855+ (Kyro485 2.96 GHz + 2.42 GHz x 3 + 1.80 GHz x 4 "
              "+ Adreno 640)", 4, 4.68, 26.24, 9.84),
    )
}

@dataclass(frozen=True)
class CloudClass:
    """A cloud server running the tails: tail there = max(floor_ms, tail measured here * factor).

    `factor` is against tails measured here with TensorFlow; `litert_factor` against tails
    measured here with LiteRT (what `converter.profile` uses when the bundle has TFLite tails):
    the profile says which (`tail_backend`)."""

    name: str
    description: str
    factor: float
    floor_ms: float
    source: str
    litert_factor: float | None = None

    def factor_for(self, tail_backend: str) -> float:
        if tail_backend == "litert" and self.litert_factor is not None:
            return self.litert_factor
        return self.factor


# --- Cloud --------------------------------------------------------------------------------------

# Datacenter GPU (NVIDIA A100 80GB). NVIDIA DeepLearningExamples,
# PyTorch/Classification/ConvNets/triton/resnet50/README.md, "Offline: NVIDIA DGX A100 (1x A100
# 80GB), ONNX Runtime TensorRT with FP16": client batch size 1 -> 469.1 inferences/s, average
# latency 2.128 ms (Triton end to end, so it includes serving overhead). Against ResNet-50 in
# TensorFlow on this CPU (131 ms) that is a factor of 0.016. Small tails do not get faster than a
# few kernel launches, hence a floor; 0.5 ms is our assumption (not from the source).
A100_RESNET50_BATCH1_MS = 2.128

CLOUDS: dict[str, CloudClass] = {
    c.name: c
    for c in (
        CloudClass(
            "gpu", "datacenter GPU class (NVIDIA A100, TensorRT FP16, batch 1)",
            A100_RESNET50_BATCH1_MS / THIS_MACHINE_TF_RESNET50_MS, 0.5,
            "NVIDIA DeepLearningExamples Triton ResNet-50 README: A100 80GB batch 1 avg "
            f"{A100_RESNET50_BATCH1_MS} ms vs TensorFlow CPU {THIS_MACHINE_TF_RESNET50_MS} ms "
            f"(LiteRT {THIS_MACHINE_LITERT_RESNET50_MS} ms) here",
            litert_factor=A100_RESNET50_BATCH1_MS / THIS_MACHINE_LITERT_RESNET50_MS),
        CloudClass(
            "cpu", "a server like this machine's CPU running the tails the profile timed "
                   "(LiteRT when the bundle has TFLite tails; no scaling)", 1.0, 0.0,
            "identity"),
    )
}

DEFAULT_CLOUD = "gpu"


def emulated() -> list[DeviceClass]:
    """The emulated classes, slowest first."""
    return sorted((d for d in DEVICES.values() if d.reference_ms is not None),
                  key=lambda d: -d.reference_ms)


DEFAULT_DEVICE = "rpi4"  # the default `--device`: the board the project is most often run on


def device_class(name: str) -> DeviceClass:
    try:
        return DEVICES[name]
    except KeyError:
        raise ValueError(f"unknown device class {name!r}: expected one of {sorted(DEVICES)}; "
                         f"list them with `python -m scheduler.simulate --list-devices`") from None


def cloud_class(name: str) -> CloudClass:
    try:
        return CLOUDS[name]
    except KeyError:
        raise ValueError(f"unknown cloud class {name!r}: expected one of {sorted(CLOUDS)}; "
                         f"list them with `python -m scheduler.simulate --list-devices`") from None


def describe() -> str:
    """A table of every class, for `--list-devices`."""
    lines = [f"device classes (board ms = host ms x reference ms / host reference ms; reference "
             f"{REFERENCE_NAME}, LiteRT/XNNPACK):"]
    for d in [DEVICES["this-machine"], *emulated()]:
        default = "  [default]" if d.name == DEFAULT_DEVICE else ""
        ref = f"{d.reference_ms:7.2f} ms" if d.reference_ms is not None else "   (host)"
        lines.append(f"  {d.name:13s} {ref}  {d.description}{default}")
        lines.append(f"  {'':13s}             source: {d.source}")
    lines.append("cloud classes (tail = max(floor, tail measured on this machine x factor)):")
    for c in CLOUDS.values():
        default = "  [default]" if c.name == DEFAULT_CLOUD else ""
        lines.append(f"  {c.name:13s} x{c.factor:6.4f}  floor {c.floor_ms} ms  {c.description}{default}")
        lines.append(f"  {'':13s}          source: {c.source}")
    return "\n".join(lines)
