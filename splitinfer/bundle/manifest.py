"""The bundle manifest: what was cut, and where each piece lives.

Standard library only, so the board, the cloud and the scheduler read bundles without
TensorFlow. The converter is the only writer; see docs/FORMATS.md for the schema.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitinfer.errors import BundleError

FORMAT_NAME = "splitinfer-bundle"
MANIFEST_VERSION = 1
MANIFEST_FILE = "manifest.json"
INPUT_SPLIT = "input"  # the cloud-only split: the whole model runs as the tail
FULL = "full"  # the device-only "split": the whole model runs as the head


@dataclass(frozen=True)
class ModelInfo:
    name: str
    sha256: str
    input_shape: tuple[int, ...]
    input_dtype: str = "float32"
    output_shape: tuple[int, ...] = ()
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Split:
    """One candidate cut: the output tensor of `layer` carries everything downstream."""

    name: str
    index: int
    layer: str
    shape: tuple[int, ...]
    dtype: str
    head: str | None
    tail: str
    head_flops: int
    tail_flops: int
    verify: dict[str, float | str] = field(default_factory=dict)
    head_int8: str | None = None
    tail_signature: str | None = None  # its signature in the manifest's tails_tflite, when verified
    head_signature: str | None = None  # its signature in `head`, when that is the shared heads file

    @property
    def is_input(self) -> bool:
        return self.head is None


@dataclass(frozen=True)
class Manifest:
    model: ModelInfo
    full: str
    full_flops: int
    splits: tuple[Split, ...]
    skipped: tuple[dict[str, str], ...] = ()
    converter: dict[str, Any] = field(default_factory=dict)
    version: int = MANIFEST_VERSION
    tails_tflite: str | None = None  # every tail as float32 TFLite, one signature per split
    keras_model: str | None = None  # the Keras model whose weights the tail files share

    @property
    def splits_without_tflite_tail(self) -> list[str]:
        """Splits that serve only through TensorFlow (every one, without tails_tflite)."""
        return [s.name for s in self.splits if not (self.tails_tflite and s.tail_signature)]

    def split(self, name: str) -> Split:
        for s in self.splits:
            if s.name == name:
                return s
        raise KeyError(
            f"Unknown split {name!r}. Expected one of {[s.name for s in self.splits]}."
        )

    @property
    def split_names(self) -> list[str]:
        return [s.name for s in self.splits]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {"format": FORMAT_NAME, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            raise BundleError(f"Not a bundle manifest: expected format {FORMAT_NAME!r}.")
        version = d.get("version")
        if version != MANIFEST_VERSION:
            raise BundleError(
                f"Bundle manifest version {version!r} is not supported: this build reads version "
                f"{MANIFEST_VERSION}. Re-run the converter (python -m converter) to rebuild it."
            )
        try:
            m = d["model"]
            model = ModelInfo(
                name=str(m["name"]),
                sha256=str(m["sha256"]),
                input_shape=tuple(int(v) for v in m["input_shape"]),
                input_dtype=str(m.get("input_dtype", "float32")),
                output_shape=tuple(int(v) for v in m.get("output_shape", ())),
                labels=tuple(str(v) for v in m.get("labels", ())),
            )
            splits = tuple(
                Split(
                    name=str(s["name"]),
                    index=int(s["index"]),
                    layer=str(s["layer"]),
                    shape=tuple(int(v) for v in s["shape"]),
                    dtype=str(s.get("dtype", "float32")),
                    head=s["head"],
                    tail=str(s["tail"]),
                    head_flops=int(s["head_flops"]),
                    tail_flops=int(s["tail_flops"]),
                    verify=dict(s.get("verify", {})),
                    head_int8=s.get("head_int8"),
                    tail_signature=s.get("tail_signature"),
                    head_signature=s.get("head_signature"),
                )
                for s in d["splits"]
            )
            return cls(
                model=model,
                full=str(d["full"]),
                full_flops=int(d.get("full_flops", 0)),
                splits=splits,
                skipped=tuple(d.get("skipped", ())),
                converter=dict(d.get("converter", {})),
                tails_tflite=d.get("tails_tflite"),
                keras_model=d.get("keras_model"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"Malformed bundle manifest: {type(e).__name__}: {e}") from e


def load_manifest(bundle_dir: str | os.PathLike, *, check_files: bool = True) -> Manifest:
    """Read `bundle_dir/manifest.json`; with `check_files`, every referenced file must exist."""
    bundle = Path(bundle_dir)
    path = bundle / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(
            f"No bundle at {bundle}: {MANIFEST_FILE} is missing. "
            "Build one with: python -m converter SOURCE --out DIR"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"Cannot read {path}: {e}") from e
    manifest = Manifest.from_dict(data)
    if check_files:
        missing = [p for p in bundle_files(manifest) if not (bundle / p).exists()]
        if missing:
            raise BundleError(
                f"Bundle {bundle} does not match its manifest: missing {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}. Rebuild it with python -m converter."
            )
    return manifest


def bundle_files(manifest: Manifest) -> list[str]:
    """Every relative path the manifest promises."""
    paths = [manifest.full]
    for s in manifest.splits:
        paths.append(s.tail)
        if s.head and s.head not in paths:
            paths.append(s.head)
        if s.head_int8:
            paths.append(s.head_int8)
    if manifest.tails_tflite:
        paths.append(manifest.tails_tflite)
    if manifest.keras_model:
        paths.append(manifest.keras_model)
    return paths


def is_bundle(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory holding a bundle manifest (the only thing --out replaces)."""
    try:
        data = json.loads((Path(path) / MANIFEST_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT_NAME
