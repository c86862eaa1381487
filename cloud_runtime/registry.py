"""What is served: bundles read through splitinfer.bundle.manifest, keyed by model name and sha256.

Also reads each bundle's calibration.json (per-split ChannelRanges) and resolves which model and
split a request means, with the 404/409 answers when it names something not served.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cloud_runtime.backend import TailSpec
from cloud_runtime.errors import BadRequest, ModelMismatch, UnknownModel, UnknownSplit
from splitinfer.bundle.calibration import load_calibration
from splitinfer.bundle.manifest import BundleError, Manifest, Split, load_manifest
from splitinfer.codec import ChannelRanges

_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class ServedModel:
    bundle: Path
    manifest: Manifest
    calibration: Mapping[str, ChannelRanges] = field(default_factory=dict)
    allocations: Mapping[str, ChannelRanges] = field(default_factory=dict)  # bits=1 payloads

    @property
    def name(self) -> str:
        return self.manifest.model.name

    @property
    def sha256(self) -> str:
        return self.manifest.model.sha256.lower()

    @property
    def labels(self) -> tuple[str, ...]:
        return self.manifest.model.labels

    def __post_init__(self) -> None:  # built once: views look tails up per request
        specs = {s.name: TailSpec(model=self.name, model_sha256=self.sha256, split=s.name,
                                  path=str((self.bundle / s.tail).resolve()),
                                  input_shape=tuple(s.shape),
                                  tflite_path=str((self.bundle / self.manifest.tails_tflite).resolve())
                                  if s.tail_signature else None,
                                  tflite_signature=s.tail_signature)
                 for s in self.manifest.splits}
        object.__setattr__(self, "_tails", specs)

    def tail(self, split: Split) -> TailSpec:
        return self._tails[split.name]

    def tails(self) -> list[TailSpec]:
        return list(self._tails.values())

    def find_split(self, name: str | None, index: int | None) -> Split:
        """The split a payload names (by name, index or both); 404 if this model has none."""
        if name is None and index is None:
            raise BadRequest("payload names no split (neither name nor index); pack it with split=NAME")
        if name is not None:
            try:
                split = self.manifest.split(name)
            except KeyError:
                raise UnknownSplit(
                    f"model {self.name!r} has no split {name!r}; served splits: "
                    f"{self.manifest.split_names}"
                ) from None
            if index is not None and index != split.index:
                raise ModelMismatch(
                    f"payload says split {name!r} has index {index}, model {self.name!r} "
                    f"({self.sha256[:16]}) has it at index {split.index}: the edge and the cloud "
                    "use different conversions of the model; redeploy one bundle to both"
                )
            return split
        if not 0 <= index < len(self.manifest.splits):
            raise UnknownSplit(
                f"model {self.name!r} has no split index {index}; expected 0.."
                f"{len(self.manifest.splits) - 1}"
            )
        return self.manifest.splits[index]

    def describe(self) -> dict:
        m = self.manifest.model
        return {
            "name": m.name, "sha256": self.sha256, "bundle": str(self.bundle),
            "input_shape": list(m.input_shape), "input_dtype": m.input_dtype,
            "output_shape": list(m.output_shape), "labels": list(m.labels),
            "splits": [
                {"name": s.name, "index": s.index, "shape": list(s.shape), "dtype": s.dtype,
                 "tail_flops": s.tail_flops, "calibrated": s.name in self.calibration,
                 "allocated": s.name in self.allocations}
                for s in self.manifest.splits
            ],
        }


class ModelRegistry:
    """The models of one server, immutable after start-up."""

    def __init__(self, models: Sequence[ServedModel]):
        self.models: tuple[ServedModel, ...] = tuple(models)
        seen: dict[str, ServedModel] = {}
        for m in self.models:
            if m.sha256 in seen:
                raise BundleError(
                    f"Model {m.name!r} (sha256 {m.sha256[:16]}) is served twice: {seen[m.sha256].bundle} "
                    f"and {m.bundle}. Pass each bundle once."
                )
            seen[m.sha256] = m

    @classmethod
    def from_bundles(cls, bundles: Sequence[str | Path]) -> "ModelRegistry":
        models = []
        for b in bundles:
            bundle = Path(b)
            manifest = load_manifest(bundle)
            models.append(ServedModel(bundle=bundle.resolve(), manifest=manifest,
                                      calibration=load_calibration(bundle, manifest),
                                      allocations=load_calibration(bundle, manifest, "allocated")))
        return cls(models)

    def tails(self) -> list[TailSpec]:
        return [t for m in self.models for t in m.tails()]

    def select(self, *, name: str | None = None, sha256: str | None = None,
               payload_prefix: str | None = None) -> ServedModel:
        """The one served model matching every given constraint.

        `name`: ?model=; `sha256`: X-Model-Sha256 (full or a prefix of >= 8 hex chars);
        `payload_prefix`: the sha256 prefix in the payload header.
        """
        candidates = list(self.models)
        if name is not None:
            candidates = [m for m in candidates if m.name == name]
            if not candidates:
                raise UnknownModel(f"no model named {name!r} is served; served: {self._served()}")
        if sha256 is not None:
            want = sha256.strip().lower()
            if len(want) < 8 or not _HEX.match(want):
                raise BadRequest(
                    f"X-Model-Sha256 must be the model's sha256 in hex (at least 8 characters). "
                    f"Received: {sha256[:80]!r}"
                )
            matching = [m for m in candidates if m.sha256.startswith(want)]
            if not matching:
                raise ModelMismatch(
                    f"X-Model-Sha256 {want[:16]}... does not match the served model(s) "
                    f"{self._served(candidates)}; update the edge bundle or route to a server "
                    "that serves this version"
                )
            candidates = matching
        if payload_prefix is not None:
            matching = [m for m in candidates if m.sha256.startswith(payload_prefix.lower())]
            if not matching:
                raise ModelMismatch(
                    f"payload was packed for model sha256 {payload_prefix}..., which does not "
                    f"match the served model(s) {self._served(candidates)}; the edge and the "
                    "cloud must use the same bundle"
                )
            candidates = matching
        if len(candidates) > 1:
            raise BadRequest(
                f"{len(candidates)} served models match: {self._served(candidates)}; name one with "
                "?model=NAME or X-Model-Sha256, or pack the payload with model_sha256="
            )
        return candidates[0]

    def _served(self, models: Sequence[ServedModel] | None = None) -> list[str]:
        return [f"{m.name} ({m.sha256[:16]})" for m in (self.models if models is None else models)]
