"""python -m converter SOURCE --out DIR: cut a Keras CNN into a split bundle."""
from __future__ import annotations

import argparse
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m converter",
        description="Cut a Keras CNN into TFLite heads and Keras tails at every single-tensor split.",
    )
    p.add_argument("source", help="a .keras/.h5 model file, or zoo:NAME (mobilenet_v2, resnet50, "
                   "inception_v3, efficientnet_b0, fashion)")
    p.add_argument("--out", help="bundle directory to write (replaced atomically)")
    p.add_argument("--weights", help="weights file to load into the model (.weights.h5)")
    p.add_argument("--input-shape", help="H,W,C: fix the input shape (needed for dynamic-shape models)")
    p.add_argument("--splits", help="comma-separated split names to keep (input is always kept)")
    p.add_argument("--max-splits", type=int, help="keep at most N splits, spread evenly by compute")
    p.add_argument("--all-cuts", action="store_true",
                   help="also offer cuts equivalent to a neighbour (a conv's output before its "
                        "BatchNormalization, a zero-padded tensor, ...); by default one of each pair")
    p.add_argument("--int8", action="store_true", help="also write int8 post-training-quantized heads")
    p.add_argument("--no-tflite-tails", action="store_true",
                   help="write Keras tails only (no TFLite tails for LiteRT CPU clouds)")
    p.add_argument("--rtol", type=float, default=1e-3, help="verification tolerance (relative)")
    p.add_argument("--list", action="store_true", help="only list the candidate splits and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from converter.build import ConvertOptions, convert, plan
    from converter.graph import UnsupportedModelError
    from converter.sources import SourceError, load_source

    try:
        input_shape = _parse_shape(args.input_shape)
        if not args.list and not args.out:
            raise ValueError("Missing --out DIR (or pass --list to only list the splits).")
        source = load_source(args.source, weights=args.weights, input_shape=input_shape)
        options = ConvertOptions(
            splits=tuple(s.strip() for s in args.splits.split(",") if s.strip()) if args.splits else None,
            max_splits=args.max_splits,
            merge_equivalent=not args.all_cuts,
            int8=args.int8,
            tflite_tails=not args.no_tflite_tails,
            rtol=args.rtol,
            progress=not args.no_progress,
        )
        if args.list:
            p = plan(source.model, options, input_shape)
            chosen = {c.name for c in p.selected}
            print(f"{len(p.candidates)} candidate splits of {source.name} "
                  f"({p.full_flops / 1e9:.3f} GFLOPs); * = selected, = same information as the "
                  "named split (--all-cuts offers both)")
            for c in p.candidates:
                mark = "*" if c.name in chosen else " "
                same = f"  = {p.merged[c.name]}" if c.name in p.merged else ""
                print(f"{mark} {c.name:40s} {str(c.shape):18s} head {c.head_flops / p.full_flops:6.1%}{same}")
            return 0
        t0 = time.perf_counter()
        manifest = convert(
            source.model, args.out, source_sha256=source.sha256, name=source.name,
            labels=source.labels, options=options, input_shape=input_shape,
        )
    except (SourceError, UnsupportedModelError, ValueError, OSError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    dt = time.perf_counter() - t0
    worst = max((s.verify.get("max_rel_err", 0.0) for s in manifest.splits), default=0.0)
    print(f"wrote {args.out}: {len(manifest.splits)} splits of {manifest.model.name} "
          f"in {dt:.1f} s; worst head+tail relative error {worst:.2e}")
    for skipped in manifest.skipped:
        print(f"  skipped {skipped['name']}: {skipped['reason']}", file=sys.stderr)
    return 0


def _parse_shape(text: str | None):
    if not text:
        return None
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"Expected --input-shape H,W,C of integers. Received: {text}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"Expected --input-shape H,W,C of positive integers. Received: {text}")
    return shape


if __name__ == "__main__":
    sys.exit(main())
