"""One device of a live fleet (benchmarks.fleet --live): a real edge runtime process, its own
emulated uplink over a link class's trace from its own offset (tc tbf on its own namespace's
interface, or the token-bucket link), an emulated board class, frames as fast as the pipeline
takes them for --seconds.

    python -m benchmarks.fleet_device --bundle B --cloud URL --device rpi4 --link lte \\
        --offset-s 12.5 --seconds 30 --out device-0.json

Writes every frame's index and where it ran, so the driver can check that none was lost or
answered twice, and its frames per second.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def shifted(trace, offset_s: float, duration_s: float):
    """The trace from `offset_s` on (wrapping), as a trace of its own."""
    from scheduler.traces import phases

    return phases(trace.name, [(_rotate(trace, offset_s), duration_s)])


def _rotate(trace, offset_s: float):
    from scheduler.traces import Trace

    period = trace.period_ms
    t = (trace.times_ms - (offset_s * 1e3) % period) % period
    return Trace(trace.name, np.sort(t), period, trace.mss)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fleet_device", description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--cloud", required=True)
    ap.add_argument("--device", required=True)
    ap.add_argument("--link", required=True)
    ap.add_argument("--offset-s", type=float, default=0.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--policy", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--uplink-dev", help="shape this interface with tc (the device runs in its own "
                                          "namespace: demo.link.FleetNet); default: a token bucket")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    from demo.link import TbfLink, TokenBucketLink
    from benchmarks._common import load_frames
    from edge_runtime.runner import EdgeConfig, EdgeRuntime, Frame, summarize
    from models.zoo import TRAINED
    from scheduler.links import link_class, link_trace
    from splitinfer.bundle.manifest import load_manifest

    lk = link_class(args.link)
    trace, _ = link_trace(lk, duration_s=max(600.0, args.seconds))
    own = shifted(trace, args.offset_s, args.seconds + 30.0)
    link = TbfLink(own, args.uplink_dev, lk.rtt_ms) if args.uplink_dev else TokenBucketLink(own, lk.rtt_ms)
    model = load_manifest(args.bundle).model
    if model.name in TRAINED:   # test scenes outside the profile's evaluation and calibration
        from models import scenes

        images, labels = scenes.make_scenes("test", np.arange(2000, 2200))
    else:
        images, _ = load_frames(model.name, model.input_shape, None, 200, allow_random=True)
        labels = [None] * len(images)
    config = EdgeConfig(policy=args.policy, device_class=args.device, max_drop_pp=1.0,
                        objective="throughput", num_threads=args.threads)

    def stream():
        i = 0
        while link.elapsed_s() < args.seconds:
            k = i % len(images)
            label = None if labels[k] is None else int(labels[k])
            yield Frame(i, images[k].astype(np.float32), label, f"frame-{k}")
            i += 1

    with EdgeRuntime(args.bundle, args.cloud, config, before_send=link.before_send) as rt:
        link.start()
        t0 = time.monotonic()
        results = rt.run(stream())
        wall = time.monotonic() - t0
    link.close()
    done = [(r.frame, r.where, round(r.latency_ms, 2)) for r in results]
    args.out.write_text(json.dumps({"device": args.device, "link": args.link,
                                    "offset_s": args.offset_s, "summary": summarize(results, wall),
                                    "frames": done}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
