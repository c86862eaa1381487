"""The Python front door, in Keras' progressive-disclosure style: one call for the common case,
the parts' own options behind keyword arguments.

    import splitinfer as si
    bundle = si.convert(model_or_path, "build/mine")       # hashes the weights itself
    prof = si.profile(bundle, images, labels)               # a typed Profile
    with si.EdgeRuntime(bundle, cloud="http://srv:8000") as rt:  # cloud=None: device-only
        top = rt.infer(image).top1                          # rt.run(frames) for streams

Each function imports its part when called: converting needs TensorFlow, a board does not.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from splitinfer.bundle.profile import Profile


def convert(model: Any, out: str | os.PathLike, *, weights: str | None = None,
            max_splits: int | None = None, splits: tuple[str, ...] | None = None,
            input_shape: tuple[int, int, int] | None = None, progress: bool = False) -> Path:
    """Cut `model` (a keras.Model, a .keras/.h5 path or "zoo:NAME") into a verified bundle at
    `out` and return its path. The model's identity (sha256) is computed here: of the file for
    a path, of the architecture name and every weight for an in-memory model."""
    from converter.build import ConvertOptions
    from converter.build import convert as build
    from converter.sources import load_source, weights_sha256

    if isinstance(model, (str, os.PathLike)):
        source = load_source(str(model), weights=weights, input_shape=input_shape)
        model, sha, name, labels = source.model, source.sha256, source.name, source.labels
    else:
        if weights is not None:
            raise TypeError("weights= applies to a model path or zoo name; load them into an "
                            "in-memory model yourself (model.load_weights)")
        sha, name, labels = weights_sha256(model), model.name, ()
    options = ConvertOptions(splits=splits, max_splits=max_splits, progress=progress)
    build(model, out, source_sha256=sha, name=name, labels=labels, options=options,
          input_shape=input_shape)
    return Path(out)


def profile(bundle: str | os.PathLike, images: np.ndarray, labels: np.ndarray | None = None, *,
            calibration: np.ndarray | None = None, bits: tuple[int, ...] | None = None,
            progress: bool = False, plot: bool = False) -> Profile:
    """Measure accuracy and bytes of every (split, bits) of `bundle` on `images` (N x H x W x C,
    0..255) and write profile.json and calibration.json there; returns the typed profile.

    `calibration`: the images offline ranges and widths are fitted on (default: the first
    images, at most a quarter, which are then not evaluated). `plot=True` also writes
    BUNDLE/pareto.png."""
    from converter.datasets import array_dataset
    from converter.profile import ProfileOptions, plot_profile, profile_bundle

    options = ProfileOptions(**({} if bits is None else {"bits": tuple(bits)}), progress=progress)
    dataset = array_dataset(images, labels, calibration, options.calib_limit)
    measured = profile_bundle(Path(bundle), dataset, options)
    if plot:
        plot_profile(Path(bundle))
    return measured


def EdgeRuntime(bundle: str | os.PathLike, cloud: str | None = None, **options: Any):  # noqa: N802
    """The board's runtime for `bundle`: device-only without `cloud`, else the scheduler picks
    (split, bits) per frame. `options` are `edge_runtime.runner.EdgeConfig` fields (policy,
    objective, slo_ms, max_drop_pp, device_class, token, ca_cert, ...). A context manager."""
    from edge_runtime.runner import EdgeConfig
    from edge_runtime.runner import EdgeRuntime as Runtime

    if cloud is None:
        options.setdefault("policy", "device")
    return Runtime(bundle, cloud, EdgeConfig(**options))


def create_app(*bundles: str | os.PathLike, **options: Any):
    """A WSGI app serving the tails of `bundles` (run it under gunicorn, or `splitinfer serve`);
    `options` are `cloud_runtime.config.ServerConfig` fields."""
    from cloud_runtime.app import create_app as make
    from cloud_runtime.config import ServerConfig

    if options.get("certfile") or options.get("keyfile"):
        raise ValueError("TLS is the server's job, not the app's: run `splitinfer serve --certfile "
                         "F --keyfile K`, or gunicorn with its own --certfile/--keyfile")
    return make(ServerConfig(bundles=tuple(str(b) for b in bundles), **options))
