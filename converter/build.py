"""Cut a Keras model into a bundle: a TFLite head and a Keras tail per split, every head in one
TFLite file and every tail in another, each weight stored once in each. The Keras tails are
architectures that share the bundle's one copy of the model (splitinfer.bundle.keras_tail).

`plan()` finds and selects the splits (cheap: graph analysis only); `convert()` writes the bundle
atomically (built in a temporary directory beside the target, then renamed), so a failed or
interrupted run never leaves a half-written bundle behind.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from converter import graph as G
from converter.export import ExportError, heads_to_tflite, tails_to_tflite, to_tflite
from converter.flops import layer_flops
from splitinfer.litert import HeadFiles, load_interpreter, run_once
from splitinfer.bundle.files import umask_mode, write_json_atomic
from splitinfer.bundle.keras_tail import MODEL_FILE, TAIL_SUFFIX, load_keras_tail, tail_document, write_tail_file
from splitinfer.bundle.manifest import (
    FORMAT_NAME,
    INPUT_SPLIT,
    MANIFEST_FILE,
    Manifest,
    ModelInfo,
    Split,
    is_bundle,
)

CONVERTER_VERSION = "0.1.0"
TAILS_TFLITE = "tails.tflite"
HEADS_TFLITE = "heads.tflite"


@dataclass(frozen=True)
class ConvertOptions:
    """Knobs for `convert`; the defaults convert every candidate split."""

    splits: tuple[str, ...] | None = None  # names to keep (`input` is always kept)
    max_splits: int | None = None  # spread by compute when set
    merge_equivalent: bool = True  # offer one cut of each pair that carries the same information
    int8: bool = False  # also write post-training-quantized int8 heads
    tflite_tails: bool = True  # also write each tail as float32 TFLite (LiteRT CPU clouds)
    representative: Callable[[], Iterable[np.ndarray]] | None = None  # for int8
    verify_samples: int = 2
    rtol: float = 1e-3  # max error relative to the output's largest magnitude
    progress: bool = True
    seed: int = 0


@dataclass(frozen=True)
class Candidate:
    """A single-tensor cut, before conversion."""

    name: str
    layer: str
    node: int  # index in the flat graph, -1 for the input
    tensor: int
    shape: tuple[int, ...]
    head_flops: int
    tail_flops: int


@dataclass
class Plan:
    model: Any  # the canonical (static-shape, flattened) Keras model
    graph: G.FlatGraph
    candidates: list[Candidate]
    selected: list[Candidate]
    full_flops: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    notes: list[str] = field(default_factory=list)
    merged: dict[str, str] = field(default_factory=dict)  # candidate -> the equivalent one offered


def plan(model: Any, options: ConvertOptions = ConvertOptions(), input_shape=None) -> Plan:
    """Find every single-tensor cut of `model` and select the ones to convert."""
    import keras

    G.check_supported(model)
    shape = tuple(input_shape) if input_shape else tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise G.UnsupportedModelError(
            f"Model {model.name!r} has a dynamic input shape {shape}; heads need static shapes. "
            "Pass --input-shape H,W,C."
        )
    source_graph = G.flatten(model)
    x = keras.Input(shape=shape, name="input", dtype="float32")
    y = G.replay(source_graph, source_graph.source, x, source_graph.sink)
    canonical = keras.Model(x, y, name=model.name)
    graph = G.flatten(canonical)
    shapes = graph.shapes()
    output_shape = tuple(int(d) for d in canonical.outputs[0].shape[1:])

    node_flops = [
        layer_flops(n.operation, [shapes[t] for t in n.inputs], [shapes[t] for t in n.outputs])
        for n in graph.nodes
    ]
    full_flops = int(sum(node_flops))
    cuts = G.single_tensor_cuts(graph.node_inputs, graph.node_outputs, graph.source, graph.sink)
    candidates = []
    for node, tensor in cuts:
        head = G.ancestors_of(graph.node_inputs, graph.node_outputs, tensor)
        head_flops = int(sum(node_flops[i] for i in head))
        name = INPUT_SPLIT if node < 0 else graph.nodes[node].name
        candidates.append(
            Candidate(
                name=name,
                layer="input" if node < 0 else graph.nodes[node].name,
                node=node,
                tensor=tensor,
                shape=tuple(int(d) for d in shapes[tensor][1:]),
                head_flops=head_flops,
                tail_flops=full_flops - head_flops,
            )
        )
    producer_inputs = [() if node < 0 else graph.nodes[node].inputs for node, _ in cuts]
    merged = {candidates[d].name: candidates[k].name for d, k in G.equivalent_cuts(
        ["input" if node < 0 else type(graph.nodes[node].operation).__name__ for node, _ in cuts],
        [k > 0 and tuple(producer_inputs[k]) == (cuts[k - 1][1],) for k in range(len(cuts))],
    ).items()} if options.merge_equivalent else {}
    selected = _select(candidates, options, full_flops, merged)
    return Plan(canonical, graph, candidates, selected, full_flops, shape, output_shape, merged=merged)


def convert(
    model: Any,
    out_dir: str | os.PathLike,
    *,
    source_sha256: str,
    name: str | None = None,
    labels: Sequence[str] = (),
    options: ConvertOptions = ConvertOptions(),
    input_shape=None,
) -> Manifest:
    """Write a bundle for `model` to `out_dir` (replaced atomically) and return its manifest."""
    import keras

    started = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and not is_bundle(out):
        raise ValueError(f"{out} exists and is not a bundle (no manifest.json of format "
                         f"{FORMAT_NAME!r}); the converter only replaces bundles. Choose a new "
                         "--out directory, or remove this one yourself.")
    p = plan(model, options, input_shape)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        umask_mode(work)
        (work / "tails").mkdir()
        if options.int8:
            (work / "heads_int8").mkdir()
        rng = np.random.default_rng(options.seed)
        samples = rng.uniform(0, 255, size=(options.verify_samples, *p.input_shape)).astype(np.float32)
        reference = np.concatenate([np.asarray(p.model(s[None], training=False)) for s in samples])

        p.model.save(work / MODEL_FILE)
        full_bytes = to_tflite(p.model, p.input_shape)
        (work / "full.tflite").write_bytes(full_bytes)
        full_err = _compare(reference, _run_tflite(full_bytes, samples))

        heads, heads_note = _shared_heads(p, work)
        splits, skipped, tail_checks = [], [], []
        progress = _progress(p.selected, options.progress, "converting splits")
        for cand in progress:
            if options.progress:
                progress.set_postfix_str(cand.name[:28])
            try:
                split, tail_check = _convert_split(p, cand, heads.get(cand.name), work, samples, reference,
                                                   options, len(splits))
                splits.append(split)
                tail_checks.append(tail_check)
            except (ExportError, G.UnsupportedModelError, _VerifyError, ValueError) as e:
                skipped.append({"name": cand.name, "reason": str(e).splitlines()[0][:300]})
        if not any(s.name == INPUT_SPLIT for s in splits):
            raise G.UnsupportedModelError(
                f"The cloud-only tail could not be built: {skipped[0]['reason'] if skipped else '?'}"
            )
        tails_tflite, tails_note = None, {}
        if options.tflite_tails:
            splits, tails_tflite, tails_note = _tflite_tails(p.model, splits, tail_checks, work, options.rtol)
        manifest = Manifest(
            model=ModelInfo(
                name=name or model.name,
                sha256=source_sha256,
                input_shape=p.input_shape,
                input_dtype="float32",
                output_shape=p.output_shape,
                labels=tuple(labels),
            ),
            full="full.tflite",
            full_flops=p.full_flops,
            splits=tuple(splits),
            skipped=tuple(skipped),
            converter={
                "version": CONVERTER_VERSION,
                "keras": keras.__version__,
                "candidates": len(p.candidates),
                "merged": p.merged,
                "seconds": round(time.perf_counter() - started, 1),
                "full_verify": full_err,
                "rtol": options.rtol,
                **heads_note,
                **tails_note,
            },
            tails_tflite=tails_tflite,
            keras_model=MODEL_FILE,
        )
        write_json_atomic(work / MANIFEST_FILE, manifest.to_dict())
        _replace_dir(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest


class _VerifyError(ValueError):
    pass


@dataclass
class _Head:
    """A split's head: the Keras model, and where its TFLite form is once written."""

    model: Any
    path: str | None = None  # relative to the bundle
    signature: str | None = None  # in the shared heads file
    run: Callable[[np.ndarray], np.ndarray] | None = None  # the TFLite head, batch 1


def _shared_heads(p: Plan, work: Path) -> tuple[dict[str, _Head], dict]:
    """Every selected head, written as one heads.tflite with a signature each. If that file does
    not convert, each head gets a file of its own (`_convert_split`), and the manifest says why."""
    models = {}
    for cand in p.selected:
        try:
            if cand.node >= 0:
                models[cand.name] = _head_model(p, cand)
        except (G.UnsupportedModelError, ValueError):
            pass  # `_convert_split` builds it again and skips the split with the reason
    if not models:
        return {}, {}
    keys = _signature_keys(list(models))
    try:
        flatbuffer = heads_to_tflite({k: (m, p.input_shape) for k, m in zip(keys, models.values())},
                                     p.model.variables)
    except ExportError as e:
        return {n: _Head(m) for n, m in models.items()}, {"heads_tflite_skipped": str(e).splitlines()[0][:300]}
    (work / HEADS_TFLITE).write_bytes(flatbuffer)
    files = HeadFiles()
    return {n: _Head(m, HEADS_TFLITE, k, files.head(work / HEADS_TFLITE, k))
            for (n, m), k in zip(models.items(), keys)}, {}


def _head_model(p: Plan, cand: Candidate) -> Any:
    import keras

    x = keras.Input(shape=p.input_shape, batch_size=1, name="input")
    return keras.Model(x, G.replay(p.graph, p.graph.source, x, cand.tensor), name=f"head_{safe_filename(cand.name)}")


def _convert_split(p: Plan, cand: Candidate, head: _Head | None, work: Path, samples, reference, options,
                   index) -> Split:
    import keras

    file_stem = safe_filename(cand.name)
    if cand.node < 0:
        activations = samples
        tail_model = p.model
        head_err = {"max_abs_err": 0.0, "max_rel_err": 0.0}
    else:
        head = head or _Head(_head_model(p, cand))  # raises why its head does not build
        if head.path is None:  # no shared heads file: a file of its own
            head.path = f"heads/{file_stem}.tflite"
            (work / "heads").mkdir(exist_ok=True)
            (work / head.path).write_bytes(to_tflite(head.model, p.input_shape))
            head.run = HeadFiles().head(work / head.path)
        activations = np.concatenate([head.run(s[None]) for s in samples])
        # Untrained models can saturate to a constant output, which would make the end-to-end
        # check vacuous, so the activation at the cut is checked too.
        expected = np.concatenate([np.asarray(head.model(s[None], training=False)) for s in samples])
        head_err = _compare(expected, activations)
        t = keras.Input(shape=cand.shape, name=_fresh_name("activation", {n.name for n in p.graph.nodes}))
        tail_model = keras.Model(t, G.replay(p.graph, cand.tensor, t, p.graph.sink), name=f"tail_{file_stem}")
    tail_path = f"tails/{file_stem}{TAIL_SUFFIX}"
    write_tail_file(work / tail_path, tail_document(None if cand.node < 0 else tail_model, f"../{MODEL_FILE}"))
    # Checked as the cloud will load it: the architecture from the file, the weights from the
    # bundle's model file.
    saved_tail = load_keras_tail(work / tail_path)
    got = np.concatenate([np.asarray(saved_tail(a[None], training=False)) for a in activations])
    err = _compare(reference, got)
    for what, e in (("head+tail output", err), ("TFLite head activation", head_err)):
        if not e["max_rel_err"] <= options.rtol:
            raise _VerifyError(
                f"{what} differs from the Keras model: max relative error "
                f"{e['max_rel_err']:.3g} > {options.rtol:g} (max abs {e['max_abs_err']:.3g})"
            )
    err = {**err, "head_max_rel_err": head_err["max_rel_err"]}
    head_int8 = None
    if options.int8 and cand.node >= 0:
        rep = options.representative or _random_representative(p.input_shape, options.seed)
        flatbuffer = to_tflite(head.model, p.input_shape, representative=rep)
        head_int8 = f"heads_int8/{file_stem}.tflite"
        (work / head_int8).write_bytes(flatbuffer)
    return Split(
        name=cand.name,
        index=index,
        layer=cand.layer,
        shape=cand.shape,
        dtype="float32",
        head=head.path if head else None,
        head_signature=head.signature if head else None,
        tail=tail_path,
        head_flops=cand.head_flops,
        tail_flops=cand.tail_flops,
        verify=err,
        head_int8=head_int8,
    ), TailCheck(tail_model, cand.shape, activations, got)


@dataclass(frozen=True)
class TailCheck:
    """A split's Keras tail, with activations and what the tail answered on them."""

    model: Any
    shape: tuple[int, ...]
    activations: np.ndarray
    expected: np.ndarray


def _tflite_tails(model, splits: list[Split], checks: list[TailCheck], work: Path,
                  rtol: float) -> tuple[list[Split], str | None, dict]:
    """Write tails.tflite, one signature per split, each verified against its Keras tail on the
    same activations, in one batch (the way the cloud runs it). A tail that does not match keeps
    no signature and says why; if the whole file does not convert, the manifest says why. Either
    way the split still serves through TensorFlow."""
    from splitinfer.litert import run_tail

    keys = _signature_keys([s.name for s in splits])
    try:
        flatbuffer = tails_to_tflite({k: (c.model, c.shape) for k, c in zip(keys, checks)},
                                     model.variables)
        interpreter, _ = load_interpreter(model_content=flatbuffer)
    except (ExportError, ValueError, RuntimeError) as e:
        return splits, None, {"tails_tflite_skipped": str(e).splitlines()[0][:300]}
    out = []
    for split, key, check in zip(splits, keys, checks):
        got = run_tail(interpreter.get_signature_runner(key), np.asarray(check.activations, np.float32))
        e = _compare(check.expected, got)
        if e["max_rel_err"] <= rtol:
            verify = {**split.verify, "tail_tflite_max_rel_err": e["max_rel_err"]}
            out.append(dataclasses.replace(split, verify=verify, tail_signature=key))
        else:
            verify = {**split.verify,
                      "tail_tflite_skipped": f"max relative error {e['max_rel_err']:.3g} > {rtol:g}"}
            out.append(dataclasses.replace(split, verify=verify))
    (work / TAILS_TFLITE).write_bytes(flatbuffer)
    return out, TAILS_TFLITE, {}


def _signature_keys(names: Sequence[str]) -> list[str]:
    """One identifier per split name, unique (signature keys are looked up by name)."""
    keys: list[str] = []
    for i, name in enumerate(names):
        key = re.sub(r"[^A-Za-z0-9_]", "_", name)
        keys.append(key if key not in keys else f"{key}_{i}")
    return keys


def _fresh_name(base: str, taken: set[str]) -> str:
    """`base`, or `base_in`, `base_in_1`, ...: the first one no layer of the model is called (a
    tail's input named like one of its layers does not build; InceptionV3 has an `activation`)."""
    name, k = base, 0
    while name in taken:
        name = f"{base}_in" if k == 0 else f"{base}_in_{k}"
        k += 1
    return name


def safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _select(candidates: list[Candidate], options: ConvertOptions, full_flops: int,
            merged: dict[str, str]) -> list[Candidate]:
    """Named splits (any candidate, merged or not), else every candidate not merged into an
    equivalent one; then at most `max_splits` of those."""
    chosen = [c for c in candidates if c.name not in merged]
    if options.splits is not None:
        by_name = {c.name: c for c in candidates}
        unknown = [s for s in options.splits if s not in by_name]
        if unknown:
            raise ValueError(
                f"Unknown split(s) {unknown}. Expected names among the {len(candidates)} "
                f"candidates: {', '.join(c.name for c in candidates[:40])}"
                f"{' ...' if len(candidates) > 40 else ''} (see --list)."
            )
        wanted = set(options.splits) | {INPUT_SPLIT}
        chosen = [c for c in candidates if c.name in wanted]
    if options.max_splits is not None:
        if options.max_splits < 1:
            raise ValueError(f"Expected max_splits >= 1. Received: max_splits={options.max_splits}")
        keep = G.spread_by_compute([c.head_flops for c in chosen], full_flops, options.max_splits,
                                   sizes=[math.prod(c.shape) for c in chosen])
        chosen = [chosen[i] for i in keep]
    return chosen


def _run_tflite(flatbuffer: bytes, samples: np.ndarray) -> np.ndarray:
    interpreter, _ = load_interpreter(model_content=flatbuffer)
    return np.concatenate([run_once(interpreter, s[None].astype(np.float32)) for s in samples])


def _compare(reference: np.ndarray, got: np.ndarray) -> dict[str, float]:
    reference = reference.astype(np.float64)
    got = got.astype(np.float64).reshape(reference.shape)
    max_abs = float(np.max(np.abs(reference - got)))
    scale = float(np.max(np.abs(reference))) or 1.0
    return {"max_abs_err": max_abs, "max_rel_err": max_abs / scale}


def _random_representative(shape, seed):
    def gen():
        rng = np.random.default_rng(seed + 1)
        for _ in range(16):
            yield rng.uniform(0, 255, size=(1, *shape)).astype(np.float32)

    return gen


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="split", dynamic_ncols=True)


def _replace_dir(new: Path, target: Path) -> None:
    """Swap `new` into place of `target`; the old bundle is removed only after the swap."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
