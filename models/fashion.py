"""The bundled models: CNNs trained from scratch on shelf-camera scenes.

Two architectures share one recipe and one scene stream: the default, a light MobileNetV2 built
for phones, and a heavy InceptionV3 (`fashion-inception`), the kind of network where splitting
pays most on weak boards.

Preprocessing lives inside the model (RGB 0..255 float32 -> [-1, 1]) so the board feeds raw pixels
and every cut point sees the same graph. The model is one flat functional graph (no nested
sub-model) so the converter can cut at any layer.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from models import scenes
from models.fashion_mnist import CLASS_NAMES

HERE = Path(__file__).resolve().parent
WEIGHTS_PATH = HERE / "fashion.weights.h5"
METADATA_PATH = HERE / "fashion.json"
INPUT_SHAPE = (scenes.SIZE, scenes.SIZE, 3)
DEFAULT_ALPHA = 0.75
BN_MOMENTUM = 0.9  # Keras' MobileNetV2 uses 0.999: far too slow for a one-hour training run
ARCHITECTURES = ("mobilenet_v2", "inception_v3")
# zoo name -> metadata file in models/ (the metadata names the weights file and the architecture)
VARIANTS = {"fashion": "fashion.json", "fashion-inception": "fashion_inception.json"}


def build_model(alpha: float = DEFAULT_ALPHA, bn_momentum: float = BN_MOMENTUM,
                size: int | None = scenes.SIZE, name: str = "fashion", arch: str = "mobilenet_v2"):
    """A fresh (untrained) flat CNN for RGB 0..255 float32 input, 10-way softmax.

    `size=None` leaves height/width free: the trainer uses it to train mostly at low resolution
    and finish at 160 with the same weights (they do not depend on the input size).
    `alpha` is MobileNetV2's width multiplier; InceptionV3 has none.
    """
    import keras

    if arch not in ARCHITECTURES:
        raise ValueError(f"Expected arch in {ARCHITECTURES}. Received: arch={arch!r}")
    if arch == "mobilenet_v2" and alpha not in (0.75, 1.0):
        raise ValueError(f"alpha={alpha}: this model is defined for alpha 0.75 or 1.0")
    inputs = keras.Input(shape=(size, size, 3), dtype="float32", name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(inputs)
    if arch == "mobilenet_v2":
        base = keras.applications.MobileNetV2(
            input_tensor=x, alpha=alpha, include_top=True, weights=None,
            classes=len(CLASS_NAMES), classifier_activation="softmax")
    else:
        base = keras.applications.InceptionV3(
            input_tensor=x, include_top=True, weights=None,
            classes=len(CLASS_NAMES), classifier_activation="softmax")
    # input_tensor= makes MobileNetV2 build on our graph; rewrap only to set our name/inputs.
    model = keras.Model(inputs, base.output, name=name)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = bn_momentum
    return model


def metadata(path: Path = METADATA_PATH) -> dict[str, Any]:
    """The shipped metadata (labels, preprocessing, accuracy, how it was trained)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: it ships with the weights; train with "
                                f"`python -m models.train_fashion` to recreate both")
    return json.loads(path.read_text())


def save_weights(model, path: Path) -> None:
    """`.weights.h5`: Keras' float32 file. `.weights16.npz`: every array in float16, in
    `model.get_weights()` order, which halves a heavy model so it can ship in the repository."""
    path = Path(path)
    if path.name.endswith(".npz"):
        arrays = {f"w{i:04d}": w.astype(np.float16) for i, w in enumerate(model.get_weights())}
        with open(path, "wb") as f:  # np.savez on a path would append .npz to a name without it
            np.savez(f, **arrays)
    else:
        model.save_weights(path)


def load_weights(model, path: Path) -> None:
    """Inverse of `save_weights`; a float16 file whose arrays do not fit the model says so."""
    path = Path(path)
    if not path.name.endswith(".npz"):
        model.load_weights(path)
        return
    with np.load(path) as data:
        arrays = [data[k] for k in sorted(data.files)]
    expected = [w.shape for w in model.get_weights()]
    if [a.shape for a in arrays] != expected:
        raise ValueError(f"{path.name} holds {len(arrays)} arrays that do not match the model's "
                         f"{len(expected)} weights: was it trained for another architecture?")
    model.set_weights([a.astype(np.float32) for a in arrays])


def load_trained(weights: Path = WEIGHTS_PATH, meta: Path = METADATA_PATH):
    """A shipped trained model, built from code and loaded from its weights file."""
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: it should ship in models/; retrain with "
                                f"`python -m models.train_fashion` to recreate it")
    info = metadata(meta) if meta.is_file() else {}
    model = build_model(alpha=float(info.get("alpha") or DEFAULT_ALPHA),
                        arch=info.get("arch", "mobilenet_v2"), name=info.get("name", "fashion"))
    load_weights(model, weights)
    return model


def load_variant(name: str):
    """The shipped model `name` (a key of VARIANTS), e.g. 'fashion-inception'."""
    if name not in VARIANTS:
        raise ValueError(f"Expected one of {sorted(VARIANTS)}. Received: {name!r}")
    meta = HERE / VARIANTS[name]
    return load_trained(HERE / metadata(meta)["weights"], meta)


METADATA = METADATA_PATH  # back-compat alias: where the metadata JSON lives
