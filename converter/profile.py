"""python -m converter.profile BUNDLE: accuracy and bytes of every (split, bits), measured.

For each split the real TFLite head runs on every evaluation image, the activation is packed with
the real codec (ranges measured on that frame, the same clipped around the mean at 2-3 bits, and
ranges calibrated offline), the payload is unpacked, and the real Keras tail classifies it.
Nothing is estimated: accuracy, bytes and codec time are what this run saw. Ranges and widths
are fitted on calibration images that are never evaluated (`converter.datasets`), and every drop
comes with one-sided confidence bounds (`converter.confidence`). Writes `profile.json`,
`calibration.json` and `pareto.png` into the bundle (see docs/FORMATS.md).

`--verify N` replays the profile's configurations on N images it has never seen
(`converter.verify`).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from converter.classify import TAIL_BACKENDS, classifier, classify_top1, predict, resolve_backend, tail_latency_ms
from converter.confidence import CONFIDENCE, drop_interval
from converter.datasets import (
    DEFAULT_CALIBRATION_IMAGES,
    DEFAULT_EVALUATION_IMAGES,
    Dataset,
    load_dataset,
)
from edge_runtime.images import ImageError, decode_image, encode_jpeg
from splitinfer.litert import HeadFiles
from splitinfer import codec
from splitinfer.bundle.calibration import CALIBRATION_FILE, CALIBRATION_VERSION
from splitinfer.bundle.files import write_json_atomic
from splitinfer.bundle.keras_tail import load_keras_tail
from splitinfer.bundle.manifest import load_manifest
from splitinfer.bundle.profile import PROFILE_FILE, PROFILE_VERSION, Profile, parse_profile
from splitinfer.encoding import Encoding
from splitinfer.errors import BundleError
from splitinfer.quiet import import_tensorflow

ALL_BITS = (codec.MIXED_BITS, 2, 3, 4, 5, 6, 8, 16, 32)
QUANTIZED_BITS = (2, 3, 4, 5, 6, 8)
#: Mean bits per value for the per-channel allocation (bits=1 configs), smallest first: a split
#: keeps the smallest whose top-1 agreement with the float tail on the calibration images is at
#: least ALLOCATION_AGREEMENT (found by bisection: agreement grows with the budget).
#: 0.97 is what the configurations within 1 pp of the default model typically show.
ALLOCATION_BUDGETS = (0.25, 0.375, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
ALLOCATION_AGREEMENT = 0.97
#: `--allocate vectors` (the default) allocates only 1-D splits (pooled features): measured on
#: the default model (100 scenes), the allocation saved 43 % of the bytes at the pooled vector
#: (162 vs 282 B at 2 bits, no accuracy lost) but never beat the uniform variants on the 4
#: spatial splits tried (brotli's spatial context does better there), at ~8 s of profiling each.
ALLOCATE_CHOICES = ("vectors", "all", "none")
# A variant with fewer bytes replaces the most accurate one only if it costs at most this much.
VARIANT_TOLERANCE_PP = 0.25
CLASSIFY_VALUES = 1 << 25  # float32 values per tail call (128 MiB)
UNPACK_SAMPLE = 32  # payloads per (split, variant) that are decoded, timed and checked (`_round_trip`)


@dataclass(frozen=True)
class ProfileOptions:
    bits: tuple[int, ...] = ALL_BITS
    limit: int | None = None  # evaluation images (None: 1000 default scenes, or the whole folder)
    calib_limit: int = DEFAULT_CALIBRATION_IMAGES
    batch_size: int = 50
    jpeg_quality: int = 90
    # JPEG, the cloud-only row, costs one run of the whole model an image, so it is measured on at
    # least this many (when the dataset has them): on the splits' 300 its upper bound was 1.49 pp
    # and no 1 pp budget could use it, while the cloud-only baseline ignores the budget.
    jpeg_limit: int = DEFAULT_EVALUATION_IMAGES
    progress: bool = True
    allocate: str = "vectors"  # which splits get a bits=1 allocation: vectors, all or none
    tail_backend: str = "auto"  # tails that classify: litert (TFLite tails), tf, auto (litert if any)
    screen: bool = True  # stop measuring variants clearly out of any budget (`Screen`)


def evaluation_images(options: ProfileOptions) -> int | None:
    """How many evaluation images to load: the splits' `limit`, or more for the JPEG row."""
    return max(options.limit, options.jpeg_limit) if options.limit else None


def profile_bundle(bundle: Path, dataset: Dataset, options: ProfileOptions = ProfileOptions()) -> Profile:
    """Measure every (split, bits) and write BUNDLE/profile.json and calibration.json; returns
    the profile as every part reads it (typed).

    The splits' rows use the first `options.limit` evaluation images of `dataset`; the JPEG row
    uses all of them (`jpeg_limit`, `evaluation_images`)."""
    import_tensorflow()
    manifest = load_manifest(bundle)
    _check_bits(options.bits)
    backend = resolve_backend(manifest, options.tail_backend)

    def keras_tail(split):
        return load_keras_tail(bundle / split.tail)

    full = classifier(bundle, manifest, manifest.split("input"), keras_tail, backend)
    jpeg_set = dataset
    dataset = dataset.first(options.limit) if options.limit else dataset  # the splits' images
    jpeg_float_pred = predict(full, jpeg_set.images, options.batch_size)
    float_pred = jpeg_float_pred[:len(dataset.images)]
    float_top1 = _accuracy(float_pred, dataset.labels)

    # The codec's times as a board and a server pay them, one frame after another: the median
    # of the thread's CPU time over encodes alone, then decodes alone, whose results are dropped.
    # Encoding while the decoded frames piled up (300 MB over 1,000 scenes) had read page
    # faults into the mean: 0.35-0.74 ms an encode in the profiler against 0.20 alone, and
    # emulated boards pad each cloud-only frame to that time times their factor.
    jpeg_data, encode_s, decode_s = [], [], []
    for img in jpeg_set.images:
        t0 = time.thread_time()
        jpeg_data.append(encode_jpeg(img, options.jpeg_quality))
        encode_s.append(time.thread_time() - t0)
    for data in jpeg_data:
        t0 = time.thread_time()
        decode_image(data)
        decode_s.append(time.thread_time() - t0)
    jpeg_pred = predict(full, np.stack([decode_image(d) for d in jpeg_data]), options.batch_size)
    jpeg_bytes = [len(d) for d in jpeg_data]
    jpeg = {
        "quality": options.jpeg_quality,
        "images": len(jpeg_set.images),
        "encode_ms": float(np.median(encode_s) * 1e3),
        "decode_ms": float(np.median(decode_s) * 1e3),
        **_byte_stats(jpeg_bytes),
        **_accuracy_fields(jpeg_pred, jpeg_float_pred, jpeg_set.labels),
    }

    configs, variants, calibration = [], [], {}
    # tail_ms is the batch-1 time on this CPU of the tails that classified (`tail_backend`): the
    # scheduler's cloud classes are scaled from it (scheduler/devices.py).
    split_info = {"input": {"tail_ms": tail_latency_ms(full, dataset.images[:1])}}
    splits = [s for s in manifest.splits if s.head is not None]
    tails, first_act, unfinished = {}, {}, []  # unfinished: (split, measured, allocation, futures)
    lossless: list[Lossless] = []  # finished lossless configurations, for the screen

    def finish(split, measured, allocation, futures) -> None:
        for f in futures:
            f.result()
        for (bits, variant), m in measured.items():
            k = len(m["pred"])  # fewer than the evaluation images when screened out
            row = {
                "split": split.name, "bits": bits, "variant": variant, "images": k,
                **_byte_stats(m["bytes"]),
                **_accuracy_fields(np.array(m["pred"]), float_pred[:k],
                                   None if dataset.labels is None else dataset.labels[:k],
                                   exact=m["exact"]),
                "pack_ms": float(np.mean(m["pack_s"]) * 1e3),
                "unpack_ms": float(np.mean(m["unpack_s"]) * 1e3),
                "float32_bytes": int(np.prod(split.shape) * 4),
            }
            if variant == "allocated":
                row["mean_bits"] = allocation.mean_bits
            if "screened" in m:
                row["screened"] = m["screened"]
            elif m["exact"] and row["agreement"] == 1.0:
                lossless.append(Lossless(split.name, bits, split.tail_flops, row["bytes_mean"], row["pack_ms"]))
            variants.append(row)
        configs.extend(choose_variants([v for v in variants if v["split"] == split.name]))

    def finished_lossless() -> list[Lossless]:
        """The lossless configurations so far, finishing the splits whose answers are all in (the
        previous split's last chunk classifies while this thread starts the next split)."""
        while unfinished and all(f.done() for f in unfinished[0][3]):
            finish(*unfinished.pop(0))
        return lossless

    # One tail thread for the whole run: the last chunk of a split still classifies while this
    # thread runs the next split's head on the calibration images and its first chunk.
    heads = HeadFiles()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tail") as pool:
        for split in _progress(splits, manifest.full_flops, options.progress):
            head = heads.head(bundle / split.head, split.head_signature)
            tail = tails[split.name] = classifier(bundle, manifest, split, keras_tail, backend)
            calib_acts = np.stack([head(x[None])[0] for x in dataset.calibration])
            ranges = codec.calibrate_ranges(calib_acts)
            calibration[split.name] = {"ranges": ranges.to_json()}
            first_act[split.name] = calib_acts[:1]
            allocation = None
            if codec.MIXED_BITS in options.bits and (
                    options.allocate == "all" or options.allocate == "vectors" and len(split.shape) == 1):
                while unfinished:  # the tails share one interpreter: one thread at a time
                    finish(*unfinished.pop(0))
                # gradients need the Keras tail
                allocation, chosen = fit_allocation(keras_tail(split), calib_acts, tail)
                calibration[split.name].update(allocated=allocation.to_json(), allocation=chosen)
            screen = Screen(float_pred, dataset.labels, lossless=finished_lossless) if options.screen else None
            futures: list = []
            measured = measure_split(manifest, split, head, tail, ranges, dataset.images,
                                     split_variants(options.bits, allocation is not None),
                                     options.batch_size, allocation, screen, pool=pool, unfinished=futures)
            unfinished.append((split, measured, allocation, futures))
        while unfinished:
            finish(*unfinished.pop(0))
    # Timed once nothing else runs: the scheduler's cloud classes are scaled from these.
    for name, tail in tails.items():
        split_info[name] = {"tail_ms": tail_latency_ms(tail, first_act[name])}

    profile = {
        "version": PROFILE_VERSION,
        "model_sha256": manifest.model.sha256,
        "model_name": manifest.model.name,
        "dataset": dataset.description,
        "float_top1": float_top1,
        "tail_backend": backend,
        "confidence": {"level": CONFIDENCE, "sided": "one",
                       "method": "newcombe-paired-score" if dataset.labels is not None
                       else "wilson-disagreement"},
        "jpeg": jpeg,
        "splits": split_info,
        "configs": configs,
        "variants": variants,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json_atomic(bundle / CALIBRATION_FILE, {"version": CALIBRATION_VERSION, "model_sha256": manifest.model.sha256,
                                                    "splits": calibration})
    write_json_atomic(bundle / PROFILE_FILE, profile)
    return parse_profile(profile, bundle / PROFILE_FILE)


def plot_profile(bundle: Path) -> Path:
    """BUNDLE/pareto.png: accuracy against bytes of every config (matplotlib, imported here)."""
    import json

    from converter.pareto import plot_pareto

    profile = json.loads((bundle / PROFILE_FILE).read_text())
    out = bundle / "pareto.png"
    plot_pareto(profile, out, title=f"{profile.get('model_name') or bundle.name}: accuracy vs bytes")
    return out


def choose_variants(rows: Sequence[dict]) -> list[dict]:
    """One config per (split, bits): the fewest bytes among the variants that cost (almost) no
    more accuracy than the best one.

    Calibrated payloads carry no per-channel parameters, so they are smaller, but they clip rare
    outliers; clipped ranges spend the few levels of 2-3 bits on the bulk of the values, so they
    are more accurate there, but cost bytes. A variant within VARIANT_TOLERANCE_PP of the best
    drop at this (split, bits) competes on bytes; ties go to per-frame ranges.
    """
    order = {v: i for i, v in enumerate(codec.PROFILE_VARIANTS)}
    by_bits: dict[int, list[dict]] = {}
    for r in rows:
        by_bits.setdefault(r["bits"], []).append(r)
    chosen = []
    for bits in sorted(by_bits):
        options = by_bits[bits]
        best = min(_drop_for_choice(r) for r in options)
        close = [r for r in options if _drop_for_choice(r) <= best + VARIANT_TOLERANCE_PP]
        chosen.append(dict(min(close, key=lambda r: (r["bytes_mean"], order.get(r["variant"], 9)))))
    return chosen


def fit_allocation(tail, calib_acts: np.ndarray, classify=None) -> tuple[codec.ChannelRanges, dict]:
    """The split's per-channel allocation: the smallest of ALLOCATION_BUDGETS whose top-1
    agreement with the float tail on the calibration images reaches ALLOCATION_AGREEMENT (the
    largest budget if none does). The accuracy reported for it is measured later, on the
    evaluation images."""
    from converter import allocation as alloc

    fits = alloc.fit_widths(calib_acts)
    importance = alloc.channel_importance(tail, calib_acts)  # gradients: the Keras tail
    classify = tail if classify is None else classify
    reference = classify_top1(classify, calib_acts)
    candidates: dict[int, codec.ChannelRanges] = {}
    tried = []

    def agreement(i: int) -> float:
        candidate = alloc.allocation_ranges(fits, alloc.allocate(importance, fits, ALLOCATION_BUDGETS[i]))
        candidates[i] = candidate
        decoded = np.stack([codec.unpack(codec.pack(a, codec.MIXED_BITS, ranges=candidate),
                                           ranges=candidate) for a in calib_acts])
        tried.append({"mean_bits": ALLOCATION_BUDGETS[i],
                      "agreement": float(np.mean(classify_top1(classify, decoded) == reference))})
        return tried[-1]["agreement"]

    lo, hi = 0, len(ALLOCATION_BUDGETS) - 1  # bisection for the first budget that reaches it
    if agreement(hi) >= ALLOCATION_AGREEMENT:
        while lo < hi:
            mid = (lo + hi) // 2
            if agreement(mid) >= ALLOCATION_AGREEMENT:
                hi = mid
            else:
                lo = mid + 1
    chosen = candidates[hi]
    return chosen, {"target_agreement": ALLOCATION_AGREEMENT, "images": len(calib_acts),
                    "tried": sorted(tried, key=lambda t: t["mean_bits"]), "mean_bits": chosen.mean_bits}


def split_variants(bits: Sequence[int], allocated: bool) -> list[tuple[int, str]]:
    """Every (bits, variant) the profiler measures at a split."""
    variants = [(b, "frame") for b in bits if b != codec.MIXED_BITS]
    variants += [(b, "clipped") for b in bits if b in codec.CLIP_SIGMAS]
    variants += [(b, "calibrated") for b in bits if b in QUANTIZED_BITS]
    if allocated:
        variants.append((codec.MIXED_BITS, "allocated"))
    return variants


@dataclass(frozen=True)
class Lossless:
    """A measured configuration that loses nothing: bit-exact payloads, and every answer the
    float model's, so its drop is 0 with no sampling error."""

    split: str
    bits: int
    tail_flops: int
    bytes_mean: float
    pack_ms: float


@dataclass(frozen=True)
class Screen:
    """Stop measuring a variant once it cannot matter, and say why in its row (`screened`). Its
    row keeps the images it was measured on, and bounds as wide as those few images give (still
    valid).

    * Out of any budget worth serving: after at least `after` images, the lower bound of its
      drop is above `drop_pp`.
    * Dominated: a lossless configuration at an earlier split (`lossless`, filled in as splits
      finish) sends no more bytes and packs no slower, with a head no longer and a tail at most
      `tail_slack` times as long. Every objective but the cloud's own cost then prefers it: it
      is at least as accurate for certain, while this variant's drop is only bounded. That is
      what prunes the float and high-bit payloads of wide early activations (614,400 values at
      the default model's block_1_expand_relu), the costliest rows of an all-splits profile.
      Checked after every chunk (bytes and packing times are steady after one); `lossless`
      may be a function, so that splits finishing meanwhile count."""

    float_pred: np.ndarray
    labels: np.ndarray | None
    after: int = 100
    drop_pp: float = 5.0
    lossless: Sequence[Lossless] | Callable[[], Sequence[Lossless]] = ()  # or what returns them now
    tail_slack: float = 1.25

    def dominating(self, tail_flops: int, bytes_mean: float, pack_ms: float) -> Lossless | None:
        known = self.lossless() if callable(self.lossless) else self.lossless
        return next((w for w in known if w.tail_flops <= tail_flops * self.tail_slack
                     and w.bytes_mean <= bytes_mean and w.pack_ms <= pack_ms), None)


def measure_split(manifest, split, head, tail, ranges, images: np.ndarray,
                  variants: Sequence[tuple[int, str]], batch_size: int = 50, allocation=None,
                  screen: Screen | None = None, pool=None, unfinished: list | None = None) -> dict:
    """Bytes, top-1 answers and codec times of each (bits, variant) at `split` on `images`.

    The tail classifies one chunk's decoded variants on a second thread while this one runs the
    head and the codec on the next chunk: the codec is single-threaded Python and numpy, so the
    two overlap on two cores. (A second codec thread measured no faster on two cores, with the
    tail busy, and its GIL hand-offs put 1.4x into the measured pack times.) `pool` is the
    tail's thread (one worker; a new one if None). With `unfinished`, the futures of the last
    chunk are appended to it rather than waited for: the answers are complete once they are
    done."""
    if pool is None:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tail") as own:
            return measure_split(manifest, split, head, tail, ranges, images, variants, batch_size,
                                 allocation, screen, pool=own)
    out = {v: {"bytes": [], "pred": [], "pack_s": [], "unpack_s": [], "exact": True, "values_match": True}
           for v in variants}
    live = list(variants)
    n = len(images)
    in_flight: list = []  # futures, in order
    screened = False

    def classify(group: list[tuple[dict, np.ndarray]]) -> None:
        preds = classify_top1(tail, np.concatenate([d for _, d in group])).reshape(len(group), -1)
        for (m, _), p in zip(group, preds):
            m["pred"].extend(p.tolist())

    for start in range(0, n, batch_size):
        chunk = images[start:start + batch_size]
        acts = np.stack([head(x[None])[0] for x in chunk])
        # Decoded variants are classified together (one tail call, not one per variant), in
        # groups of at most CLASSIFY_VALUES values so that big tensors stay within memory.
        pending: list[tuple[dict, np.ndarray]] = []
        for bits, variant in live:
            m = out[(bits, variant)]
            decoded = _round_trip(manifest, split, acts, bits, variant,
                                  allocation if variant == "allocated" else ranges, m)
            pending.append((m, decoded))
            if (len(pending) + 1) * acts.size > CLASSIFY_VALUES:
                in_flight.append(pool.submit(classify, pending))
                pending = []
        if pending:
            in_flight.append(pool.submit(classify, pending))
        while len(in_flight) > 1:  # at most one chunk ahead: memory stays bounded
            in_flight.pop(0).result()
        if screen is None:
            continue
        for v in live:
            m = out[v]
            w = screen.dominating(split.tail_flops, float(np.mean(m["bytes"])), float(np.mean(m["pack_s"])) * 1e3)
            if w is not None:
                m["screened"] = (f"dominated by {w.split} at {w.bits} bits: lossless, "
                                 f"{w.bytes_mean:.0f} B, packs in {w.pack_ms:.2f} ms")
        if not screened and start + len(chunk) >= screen.after:
            screened = True
            for f in in_flight:
                f.result()
            in_flight.clear()
            for v in live:
                if "screened" not in out[v] and _clearly_out(out[v]["pred"], screen):
                    out[v]["screened"] = f"drop above {screen.drop_pp:g} pp at its lower bound"
        live = [v for v in live if "screened" not in out[v]]
    if unfinished is None:
        for f in in_flight:
            f.result()
    else:
        unfinished.extend(in_flight)
    return out


def _round_trip(manifest, split, acts: np.ndarray, bits: int, variant: str, own, m: dict) -> np.ndarray:
    """Pack every activation of a chunk as the edge would, and return what the cloud decodes;
    records bytes and times in `m`. A bit-exact payload (float32) gives the tail the head's own
    output.

    Only the first UNPACK_SAMPLE payloads of a variant are decoded (`unpack`): they time the
    cloud's side and check, bit for bit, the values `pack_with_values` predicts, which stand in
    for decoding the rest (decoding cost as much as packing). A mismatch, which would be a codec
    bug, falls back to decoding every payload.

    Times are this thread's CPU time (`time.thread_time`): the codec is single-threaded, so that
    is what it costs, whatever else shares the cores (the tail's thread classifying the previous
    chunk). Wall time had counted the waits for a core into the pack times the board is padded to."""
    decoded = np.empty_like(acts)
    for i, a in enumerate(acts):
        t0 = time.thread_time()
        payload, values = codec.pack_with_values(
            a, bits, model_sha256=manifest.model.sha256, split_index=split.index,
            **codec.variant_kwargs(variant, bits, own))
        t1 = time.thread_time()
        m["bytes"].append(len(payload))
        m["pack_s"].append(t1 - t0)
        if len(m["unpack_s"]) < UNPACK_SAMPLE or not m["values_match"]:
            t1 = time.thread_time()
            decoded[i] = codec.unpack(payload, ranges=own if variant in codec.REFERENCED_PARAMS else None)
            m["unpack_s"].append(time.thread_time() - t1)
            if m["values_match"] and not np.array_equal(values(), decoded[i]):
                m["values_match"] = False
                print(f"warning: {split.name} {bits} bits {variant}: pack_with_values differs from "
                      "unpack; decoding every payload", file=sys.stderr)
        else:
            decoded[i] = values()
    exact = np.array_equal(decoded, acts)
    m["exact"] = m["exact"] and exact
    return acts if exact else decoded


def _clearly_out(pred: list, screen: Screen) -> bool:
    k = len(pred)
    labels = None if screen.labels is None else screen.labels[:k]
    return drop_interval(screen.float_pred[:k], np.array(pred), labels).lower_pp > screen.drop_pp


def _accuracy(pred: np.ndarray, labels: np.ndarray | None) -> float | None:
    return None if labels is None else float(np.mean(pred == labels))


def _accuracy_fields(pred, float_pred, labels, exact: bool = False) -> dict:
    """Top-1, agreement with the float model, and the drop with its bounds (paired against the
    float model on the same images; without labels, the disagreement with it).

    `exact`: every decoded activation equalled the head's (float32 payloads). If the answers
    also all agreed with the float model's, the codec loses nothing on any image and the split
    differs from the model only within the converter's verified tolerance: the drop is 0 with
    no sampling error (a bound from few images would otherwise rule lossless payloads out)."""
    top1 = _accuracy(pred, labels)
    agreement = float(np.mean(pred == float_pred))
    if exact and agreement == 1.0:
        bounds = {"drop_pp": 0.0, "drop_lower_pp": 0.0, "drop_upper_pp": 0.0}
    else:
        bounds = drop_interval(float_pred, pred, labels).to_json()
    return {"top1": top1, **bounds, "agreement": agreement}


def _drop_for_choice(row: dict) -> float:
    """What a variant is chosen on: its upper bound (its point drop in older rows), and never
    less than half its disagreement with the float model."""
    return max(row.get("drop_upper_pp", row["drop_pp"]), (1 - row["agreement"]) * 100 * 0.5)


def _byte_stats(sizes) -> dict:
    sizes = np.asarray(sizes, dtype=np.float64)
    return {"bytes_mean": float(sizes.mean()), "bytes_p95": float(np.percentile(sizes, 95))}


def _check_bits(bits: Sequence[int]) -> None:
    bad = [b for b in bits if b not in ALL_BITS]
    if bad:
        raise ValueError(f"Expected bit widths among {set(ALL_BITS)}. Received: bits={bad}")


def split_cost(split, full_flops: int) -> float:
    """Relative profiling time of a split, for the progress bar's estimate: the tail's share of
    the model (classifying every variant) plus the activation's size (packing every variant).
    The weights are this machine's: a whole-model LiteRT tail costs about as much per image as
    the codec on 65,000 values."""
    values = int(np.prod(split.shape))
    return split.tail_flops / max(full_flops, 1) + values / 65_000


def _progress(splits, full_flops: int, enabled: bool):
    """Yield the splits; with `enabled`, under a bar that advances by each split's cost, so the
    time left is not skewed by the early, expensive splits."""
    if not enabled:
        yield from splits
        return
    from tqdm import tqdm

    costs = [split_cost(s, full_flops) for s in splits]
    with tqdm(total=sum(costs), desc="profiling splits", dynamic_ncols=True,
              bar_format="{l_bar}{bar}| {elapsed}<{remaining}{postfix}") as bar:
        for split, cost in zip(splits, costs):
            bar.set_postfix_str(split.name[:28])
            yield split
            bar.update(cost)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m converter.profile", description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--data", help="folder of images (labels.csv: file,label); default: the "
                   "default model's test scenes")
    p.add_argument("--out", type=Path, help="where to write the profile (default BUNDLE/profile.json)")
    p.add_argument("--limit", type=int, help=f"evaluation images (default {DEFAULT_EVALUATION_IMAGES} "
                   "scenes / all files after the calibration ones)")
    p.add_argument("--calibration", type=int, default=DEFAULT_CALIBRATION_IMAGES,
                   help="calibration images, never evaluated (default %(default)s scenes; in a "
                   "folder, the first ones, at most a quarter of it)")
    p.add_argument("--verify", type=int, metavar="N",
                   help="do not profile: replay the profile's configurations on N images it has "
                   "never seen; exit 1 if one's drop is above its bound")
    p.add_argument("--configs", choices=("front", "all"), default="front",
                   help="with --verify: each split's Pareto front of bytes vs bound (default), or all")
    p.add_argument("--json", type=Path, help="with --verify: write the report here")
    p.add_argument("--strict", action="store_true", help="with --verify: also fail when a "
                   "replayed drop is above its bound by less than the replay's own noise")
    p.add_argument("--bits", help="comma-separated bit widths (default 1,2,3,4,5,6,8,16,32; "
                   "1 = a per-channel allocation)")
    p.add_argument("--allocate", choices=ALLOCATE_CHOICES, default="vectors",
                   help="splits that get a per-channel allocation (bits 1): 1-D ones (default), all, none")
    p.add_argument("--tail-backend", choices=TAIL_BACKENDS, default="auto",
                   help="tails that classify: TFLite on LiteRT when the bundle has them (auto, the "
                        "default), litert, or tf (the Keras tails)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.verify is not None:
        from converter.verify import main_verify

        return main_verify(args)
    try:
        bits = tuple(int(b) for b in args.bits.split(",")) if args.bits else ALL_BITS
        _check_bits(bits)
        options = ProfileOptions(bits=bits, limit=args.limit, progress=not args.no_progress,
                                 allocate=args.allocate, calib_limit=args.calibration,
                                 tail_backend=args.tail_backend)
        manifest = load_manifest(args.bundle)
        dataset = load_dataset(manifest, args.data, limit=evaluation_images(options),
                               calibration=options.calib_limit)
        t0 = time.perf_counter()
        profile = profile_bundle(args.bundle, dataset, options)
        plot = plot_profile(args.bundle)
    except (BundleError, ImageError, ValueError, OSError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    if args.out:
        shutil.copyfile(args.bundle / PROFILE_FILE, args.out)
    best = min((c for c in profile.configs if c.drop_pp <= 1.0), key=lambda c: c.bytes_mean,
               default=None)
    print(f"profiled {len(profile.configs)} configs on {profile.images} images in "
          f"{time.perf_counter() - t0:.0f} s; float top-1 {profile.float_top1}; "
          f"JPEG {profile.jpeg.bytes_mean:.0f} B")
    if best:
        print(f"fewest bytes within 1 pp: {best.split} @ {Encoding.of(best.bits).label} "
              f"({best.variant}): {best.bytes_mean:.0f} B, drop {best.point_drop_pp:.2f} pp "
              f"(at most {best.upper_drop_pp:.2f} pp at {CONFIDENCE:.0%} confidence)")
    print(f"wrote {args.out or args.bundle / 'profile.json'}, {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
