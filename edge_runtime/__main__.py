"""python -m edge_runtime: run a bundle's heads on this board against a cloud service."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Iterator

from edge_runtime.images import ImageError, check_image_file, list_images, load_image
from edge_runtime.runner import POLICIES, EdgeConfig, EdgeRuntime, Frame, summarize
from splitinfer.bundle.manifest import BundleError
from splitinfer.bundle.profile import DROP_ESTIMATES
from splitinfer.encoding import Encoding
from splitinfer.protocol import TOKEN_ENV

DATASETS = ("fashion-test",)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m edge_runtime", description=__doc__)
    p.add_argument("--bundle", required=True, type=Path)
    p.add_argument("--cloud", help="cloud service URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--policy", default="auto", choices=POLICIES)
    p.add_argument("--split", help="split for --policy fixed")
    p.add_argument("--bits", type=_encoding_bits, metavar="ENCODING",
                   help="encoding for --policy fixed: 2..8 bits, float16, float32, or per-channel "
                        "(the split's allocation; also 1)")
    p.add_argument("--objective", default="throughput",
                   help="latency | throughput | cloud | bytes, or weights like latency=0.7,bytes=0.3")
    p.add_argument("--slo-ms", type=float, help="max latency per frame (ms)")
    p.add_argument("--max-drop-pp", type=float, default=1.0, help="max accuracy drop (pp)")
    p.add_argument("--drop-estimate", choices=DROP_ESTIMATES, default="upper",
                   help="which profiled drop --max-drop-pp bounds: the upper confidence "
                   "bound (default: the SLO holds on unseen images) or the point estimate")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", type=Path, help="an image file or a folder (labels.csv optional)")
    src.add_argument("--dataset", choices=DATASETS, help="the default model's test scenes")
    src.add_argument("--source", metavar="PATH|URL|/dev/videoN",
                     help="a video file, an rtsp:// or http(s):// stream, or a camera (needs "
                          "OpenCV); frames the pipeline is too slow for are skipped and counted")
    p.add_argument("--limit", type=int, help="at most N frames")
    p.add_argument("--fps", type=float, help="camera rate (default: as fast as the pipeline goes; "
                                             "for --source, the source's own rate)")
    p.add_argument("--device", help="emulate a slower board class (see python -m scheduler.simulate --list-devices)")
    p.add_argument("--threads", type=int, help="LiteRT threads (default: all cores)")
    p.add_argument("--max-heads", type=int, help="keep at most N heads loaded")
    p.add_argument("--token", help="bearer token for the cloud (or SPLITINFER_TOKEN); send it "
                                   "over https only")
    p.add_argument("--ca-cert", help="PEM file of the CA that signed an https cloud's certificate "
                                     "(default: the system trust store)")
    p.add_argument("--jsonl", help="write one JSON line per frame here ('-' for stdout)")
    return p.parse_args(argv)


def _encoding_bits(text: str) -> int:
    """--bits: a width or an encoding's name, as the wire's integer tag."""
    try:
        enc = Encoding.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if enc.bits is None:
        raise argparse.ArgumentTypeError(f"{text!r} sends no activation; --policy cloud sends JPEG")
    return enc.bits


def frames_from_images(path: Path, shape, limit: int | None) -> Iterator[Frame]:
    entries = list_images(path)[:limit]
    for e in entries:  # check every size before the first frame, so no frame is dropped midway
        check_image_file(e.path, shape)
    for i, e in enumerate(entries):
        yield Frame(i, load_image(e.path, shape), e.label, e.path.name)


def frames_from_dataset(name: str, limit: int | None) -> Iterator[Frame]:
    from models import scenes

    n = limit or 1000
    for start in range(0, n, 64):
        idx = list(range(start, min(start + 64, n)))
        images, labels = scenes.make_scenes("test", idx)
        for i, img, label in zip(idx, images, labels):
            yield Frame(i, img.astype("float32"), int(label), f"test-{i}")


def main(argv=None) -> int:
    import os

    args = parse_args(argv)
    out = None
    source = None
    try:
        config = EdgeConfig(
            policy=args.policy, split=args.split, bits=args.bits, objective=args.objective,
            slo_ms=args.slo_ms, max_drop_pp=args.max_drop_pp, device_class=args.device,
            drop_estimate=args.drop_estimate,
            num_threads=args.threads, max_heads=args.max_heads,
            camera_fps=None if args.source else args.fps,  # a --source paces itself
            token=args.token or os.environ.get(TOKEN_ENV), ca_cert=args.ca_cert,
        )
        runtime = EdgeRuntime(args.bundle, args.cloud, config)
        shape = runtime.manifest.model.input_shape
        if args.source:
            from edge_runtime.sources import frames_from

            frames = source = frames_from(args.source, shape=tuple(shape), fps=args.fps,
                                          limit=args.limit)
        else:
            frames = (frames_from_images(args.images, shape, args.limit) if args.images
                      else frames_from_dataset(args.dataset, args.limit))
        if args.images:
            frames = iter(list(frames))  # validate every file before the first frame runs
        out = sys.stdout if args.jsonl == "-" else (open(args.jsonl, "w") if args.jsonl else None)
        info = runtime.runtime_info
        print(f"edge: {info['runtime']} ({info['delegate']}, {info['num_threads']} threads), "
              f"{info['heads_loaded']} heads loaded, device class {info['device_class']} "
              f"(x{info['device_factor']:.2f}), policy {args.policy}", file=sys.stderr)
        if info["heads_dropped"]:
            print(f"edge: --max-heads left out {len(info['heads_dropped'])} heads: "
                  f"{', '.join(info['heads_dropped'][:8])}", file=sys.stderr)

        def emit(result):
            if out is not None:
                out.write(json.dumps(result.to_json()) + "\n")

        t0 = time.monotonic()
        with runtime:
            results = runtime.run(frames, on_result=emit)
        summary = {**summarize(results, time.monotonic() - t0), **info,
                   "cloud_errors": len(runtime.events)}
        if source is not None:
            summary.update(frames_skipped=source.skipped, frames_delivered=source.delivered)
    except (BundleError, ImageError, ValueError, KeyError, OSError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {str(msg).splitlines()[0]}", file=sys.stderr)
        return 2
    finally:
        if source is not None:
            source.close()
        if out is not None and out is not sys.stdout:
            out.close()
    if out is not None:
        with (open(args.jsonl, "a") if out is not sys.stdout else _Stdout()) as f:
            f.write(json.dumps(summary) + "\n")
    tls = next((e["error"] for e in runtime.events if e.get("kind") == "tls"), None)
    if tls is not None:  # once, not per frame: the frames were finished on the device
        print(f"edge: {tls}", file=sys.stderr)
    acc = summary["accuracy"]
    print(f"edge: {summary['frames']} frames, {summary['throughput_fps']} fps, "
          f"latency mean {summary['latency_ms_mean']} ms p95 {summary['latency_ms_p95']} ms, "
          f"{summary['bytes_per_frame']} B/frame, accuracy {acc if acc is not None else 'n/a'}, "
          f"{summary['fallbacks']} fallbacks, where {summary['where']}"
          + (f", {summary['frames_skipped']} skipped / {summary['frames_delivered']} delivered "
             f"source frames" if source is not None else ""), file=sys.stderr)
    return 0


class _Stdout:
    def __enter__(self):
        return sys.stdout

    def __exit__(self, *exc):
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
