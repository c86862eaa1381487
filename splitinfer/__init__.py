"""splitinfer: dynamic device-cloud split inference for Keras CNNs.

    import splitinfer as si
    bundle = si.convert(model, "build/mine")
    with si.EdgeRuntime(bundle) as rt:
        print(rt.infer(image).top1)

Attributes load on first use, so `import splitinfer` costs nothing and a board that only packs
activations never imports TensorFlow (see `splitinfer.api`).
"""
from __future__ import annotations

import importlib

_LAZY = {
    "convert": "splitinfer.api",
    "profile": "splitinfer.api",
    "EdgeRuntime": "splitinfer.api",
    "create_app": "splitinfer.api",
    "pack": "splitinfer.codec",
    "unpack": "splitinfer.codec",
    "read_header": "splitinfer.codec",
    "ChannelRanges": "splitinfer.codec",
    "Profile": "splitinfer.bundle.profile",
    "load_manifest": "splitinfer.bundle.manifest",
    "SplitInferError": "splitinfer.errors",
    "BundleError": "splitinfer.errors",
    "PackingError": "splitinfer.errors",
    "CloudError": "splitinfer.errors",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'splitinfer' has no attribute {name!r}. "
                             f"Expected one of {__all__}.")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
