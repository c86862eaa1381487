"""BUNDLE/calibration.json: per-split channel ranges measured offline, shared by edge and cloud.

One reader for both sides, so that a file one side refuses the other refuses too, with the same
message. Standard library and the codec only (it runs on the board).
"""
from __future__ import annotations

import json
from pathlib import Path

from splitinfer.bundle.manifest import Manifest
from splitinfer.codec import ChannelRanges
from splitinfer.errors import BundleError, PackingError

CALIBRATION_FILE = "calibration.json"
CALIBRATION_VERSION = 1


KINDS = ("ranges", "allocated")


def load_calibration(bundle: Path, manifest: Manifest, kind: str = "ranges") -> dict[str, ChannelRanges]:
    """Per-split ranges (kind "ranges") or per-channel allocations ("allocated") from
    BUNDLE/calibration.json, or {} when the bundle has none.

    Layout (written by converter.profile): {"version": 1, "model_sha256": ..., "splits":
    {SPLIT: {"ranges": ChannelRanges.to_json(), "allocated": ChannelRanges.to_json() with
    bits, "allocation": how its budget was chosen}}}; a bare ranges object per split (older
    profiles) is read as "ranges". Splits that the manifest does not list are ignored.
    """
    if kind not in KINDS:
        raise ValueError(f"Expected kind in {KINDS}. Received: kind={kind!r}")
    path = bundle / CALIBRATION_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"Cannot read {path}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("splits"), dict):
        raise BundleError(f"{path}: expected an object with a 'splits' object (split -> ranges)")
    version = data.get("version", CALIBRATION_VERSION)
    if version != CALIBRATION_VERSION:
        raise BundleError(f"{path}: version {version!r} is not supported (this version reads "
                          f"{CALIBRATION_VERSION}); rerun the profiler")
    sha = data.get("model_sha256")
    if sha is not None and str(sha).lower() != manifest.model.sha256.lower():
        raise BundleError(
            f"{path} was measured on model sha256 {str(sha)[:16]}..., the bundle's model is "
            f"{manifest.model.sha256[:16]}...; rerun the profiler (python -m converter.profile)"
        )
    out: dict[str, ChannelRanges] = {}
    known = set(manifest.split_names)
    for name, entry in data["splits"].items():
        if name not in known:
            continue
        if isinstance(entry, dict) and "ranges" in entry:
            entry = entry.get(kind)
        elif kind != "ranges":
            entry = None
        if entry is None:
            continue
        try:
            out[name] = ChannelRanges.from_json(entry)
        except PackingError as e:
            raise BundleError(f"{path}: split {name!r}: {e}") from e
    return out
