"""Device and cloud classes: how much slower or faster than THIS machine each one runs a model.

Head latencies in a bundle's `device-this-machine.json` and `tail_ms` in `profile.json` are measured
on this development machine. The simulator turns them into another board's (or the cloud's)
numbers by multiplying with a speed factor, so each factor must rest on a published figure for a
model we can also run here. We use MobileNet (v1 / v2) float32 at 224x224, the de-facto mobile
benchmark, with the same runtime family (TFLite / LiteRT with XNNPACK) on both sides.

This machine's reference figures (Intel Xeon, 2 shared cores, LiteRT 2.3 via
ai_edge_litert, XNNPACK, float32, batch 1, median of 100 runs after 10 warm-ups, measured
2026-12-01 with the script below):

    keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
        num_threads=1: 8.08 ms    num_threads=2: 5.18 ms   (an earlier run: 8.27 / 5.89 ms)
    keras.applications.MobileNet(weights=None, input_shape=(224, 224, 3))   # v1
        num_threads=1: 12.16 ms   num_threads=2: 6.84 ms

    Command (TF 2.21, ai-edge-litert 2.3.0, from the repo root):
      .venv/bin/python - <<'EOF'
      import time, statistics, numpy as np, tensorflow as tf
      from ai_edge_litert.interpreter import Interpreter
      for ctor in (tf.keras.applications.MobileNet, tf.keras.applications.MobileNetV2):
          tfl = tf.lite.TFLiteConverter.from_keras_model(
              ctor(weights=None, input_shape=(224, 224, 3))).convert()
          for threads in (1, 2):
              it = Interpreter(model_content=tfl, num_threads=threads); it.allocate_tensors()
              i = it.get_input_details()[0]["index"]
              x = np.random.default_rng(0).random((1, 224, 224, 3), dtype=np.float32)
              for _ in range(10): it.set_tensor(i, x); it.invoke()
              ts = []
              for _ in range(100):
                  t0 = time.perf_counter(); it.set_tensor(i, x); it.invoke()
                  ts.append((time.perf_counter() - t0) * 1e3)
              print(ctor.__name__, threads, statistics.median(ts))
      EOF

The 2-thread figures are the reference because `edge_runtime.profile` measures heads with
num_threads=2 on this machine (see docs/FORMATS.md). The cloud reference is TensorFlow on this
CPU (how `converter.profile` measures `tail_ms`):

    keras.applications.ResNet50(weights=None), batch 1, tf.function, 2 cores: 131 ms median
    keras.applications.MobileNetV2(weights=None), batch 1, tf.function:         40 ms median

or, for bundles with TFLite tails, LiteRT on this CPU (the script above with ResNet50, 2
threads, median of 50 runs, measured 2026-12-06; MobileNetV2 gave 3.68 ms in the same run):

    keras.applications.ResNet50(weights=None), batch 1, LiteRT, num_threads=2:   38.3 ms median

A factor is (published ms on that machine) / (this machine's ms for the same model), so a factor
above 1 means slower than here. Factors are approximate by nature (clocks, thermal throttling,
runtime versions); the scheduler corrects them online from observed latencies
(`Scheduler.observe_device` / `observe_cloud`), so they only need to be right to tens of percent.
"""
from __future__ import annotations

from dataclasses import dataclass

# This machine's reference latencies (see the module docstring for how they were measured).
THIS_MACHINE_MOBILENET_V1_MS = 6.84   # LiteRT, float32, 224x224, num_threads=2
THIS_MACHINE_MOBILENET_V2_MS = 5.18   # LiteRT, float32, 224x224, num_threads=2
THIS_MACHINE_TF_RESNET50_MS = 131.0   # TensorFlow 2.21 CPU, batch 1
THIS_MACHINE_LITERT_RESNET50_MS = 38.3  # LiteRT, float32, 224x224, num_threads=2, batch 1
# Sustained LiteRT FLOP/s here, for bundles without a device profile: MobileNetV2 1.0 224x224 is
# about 0.60 GFLOP (2 x 300 M multiply-accumulates, as converter/flops.py counts) in 5.18 ms.
THIS_MACHINE_FLOPS_PER_S = 0.60e9 / (THIS_MACHINE_MOBILENET_V2_MS / 1e3)


@dataclass(frozen=True)
class DeviceClass:
    """An edge board: latency there = latency measured here * factor."""

    name: str
    description: str
    factor: float
    source: str


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


# --- Edge devices -------------------------------------------------------------------------------

# Raspberry Pi 4 (BCM2711, 4x Cortex-A72 @ 1.5 GHz). XNNPACK README, "Raspberry Pi" table
# (github.com/google/XNNPACK, README.md, benchmarked 2020-02-12 with end2end-bench, multi-threaded,
# Raspbian Buster): MobileNet v2 1.0X = 44 ms on RPi 4. XNNPACK is LiteRT's CPU backend, so the
# comparison is like for like.
RPI4_MOBILENET_V2_MS = 44.0

# Raspberry Pi 5 (BCM2712, 4x Cortex-A76 @ 2.4 GHz). No like-for-like LiteRT MobileNetV2 float figure
# was found, so this is derived: the RPi 4 figure above divided by 2.5, the midpoint of the
# "2-3x the CPU performance of Raspberry Pi 4" that Raspberry Pi Ltd announced for the Pi 5
# (raspberrypi.com/news/introducing-raspberry-pi-5, 2023-09-28). Cross-check: Alasdair Allan's
# TFLite benchmark (github.com/aallan/benchmarking-ml-on-the-edge, README table, 4 threads,
# SSD-MobileNet v2 300x300) measured 23.5 ms on a Pi 5 vs 112.6 ms on a Pi 4 (4.8x), so 2.5x is the
# conservative end.
RPI5_MOBILENET_V2_MS = RPI4_MOBILENET_V2_MS / 2.5

# High-end phone (Google Pixel 4, Snapdragon 855). TensorFlow Lite "Performance measurement" page
# (tensorflow.org/lite/performance/measurement, "Android performance benchmarks", Android 10,
# benchmark_model): Mobilenet_1.0_224 (float), CPU 4 threads = 14.0 ms on Pixel 4.
PIXEL4_MOBILENET_V1_MS = 14.0

DEVICES: dict[str, DeviceClass] = {
    d.name: d
    for d in (
        DeviceClass(
            "this-machine", "the development machine itself (no scaling)", 1.0,
            "identity"),
        DeviceClass(
            "phone", "high-end phone class (Pixel 4, Snapdragon 855, CPU 4 threads)",
            PIXEL4_MOBILENET_V1_MS / THIS_MACHINE_MOBILENET_V1_MS,
            "TFLite performance measurement page: Mobilenet_1.0_224 float, Pixel 4, CPU 4 threads "
            f"{PIXEL4_MOBILENET_V1_MS} ms vs {THIS_MACHINE_MOBILENET_V1_MS} ms here"),
        DeviceClass(
            "rpi5", "Raspberry Pi 5 class board (4x Cortex-A76 @ 2.4 GHz)",
            RPI5_MOBILENET_V2_MS / THIS_MACHINE_MOBILENET_V2_MS,
            f"XNNPACK README RPi 4 MobileNet v2 {RPI4_MOBILENET_V2_MS} ms / 2.5 (Raspberry Pi Ltd: "
            f"Pi 5 has 2-3x Pi 4 CPU performance) = {RPI5_MOBILENET_V2_MS:.1f} ms vs "
            f"{THIS_MACHINE_MOBILENET_V2_MS} ms here"),
        DeviceClass(
            "rpi4", "Raspberry Pi 4 class board (4x Cortex-A72 @ 1.5 GHz)",
            RPI4_MOBILENET_V2_MS / THIS_MACHINE_MOBILENET_V2_MS,
            f"XNNPACK README, Raspberry Pi table: MobileNet v2 1.0X {RPI4_MOBILENET_V2_MS} ms "
            f"(multi-threaded) vs {THIS_MACHINE_MOBILENET_V2_MS} ms here"),
    )
}

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


def slowest_device() -> str:
    """The default `--device`: the slowest class, so results are not flattered by a fast board."""
    return max(DEVICES.values(), key=lambda d: d.factor).name


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
    lines = ["device classes (latency = measured on this machine x factor):"]
    for d in sorted(DEVICES.values(), key=lambda d: d.factor):
        default = "  [default]" if d.name == slowest_device() else ""
        lines.append(f"  {d.name:13s} x{d.factor:6.3f}  {d.description}{default}")
        lines.append(f"  {'':13s}          source: {d.source}")
    lines.append("cloud classes (tail = max(floor, tail measured on this machine x factor)):")
    for c in CLOUDS.values():
        default = "  [default]" if c.name == DEFAULT_CLOUD else ""
        lines.append(f"  {c.name:13s} x{c.factor:6.4f}  floor {c.floor_ms} ms  {c.description}{default}")
        lines.append(f"  {'':13s}          source: {c.source}")
    return "\n".join(lines)
