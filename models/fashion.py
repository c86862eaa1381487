"""The bundled default model: MobileNetV2 trained from scratch on shelf-camera scenes.

Preprocessing lives inside the model (RGB 0..255 float32 -> [-1, 1]) so the board feeds raw pixels
and every cut point sees the same graph. The model is one flat functional graph (no nested
sub-model) so the converter can cut at any layer.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models import scenes
from models.fashion_mnist import CLASS_NAMES

HERE = Path(__file__).resolve().parent
WEIGHTS_PATH = HERE / "fashion.weights.h5"
METADATA_PATH = HERE / "fashion.json"
INPUT_SHAPE = (scenes.SIZE, scenes.SIZE, 3)
DEFAULT_ALPHA = 0.75
BN_MOMENTUM = 0.9  # Keras' MobileNetV2 uses 0.999: far too slow for a one-hour training run


def build_model(alpha: float = DEFAULT_ALPHA, bn_momentum: float = BN_MOMENTUM,
                size: int | None = scenes.SIZE, name: str = "fashion"):
    """A fresh (untrained) flat MobileNetV2 for RGB 0..255 float32 input, 10-way softmax.

    `size=None` leaves height/width free: the trainer uses it to train mostly at low resolution
    and finish at 160 with the same weights (they do not depend on the input size).
    """
    import keras

    if alpha not in (0.75, 1.0):
        raise ValueError(f"alpha={alpha}: this model is defined for alpha 0.75 or 1.0")
    inputs = keras.Input(shape=(size, size, 3), dtype="float32", name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(inputs)
    base = keras.applications.MobileNetV2(
        input_tensor=x, alpha=alpha, include_top=True, weights=None,
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


def load_trained(weights: Path = WEIGHTS_PATH, meta: Path = METADATA_PATH):
    """The shipped trained model, built from code and loaded from `fashion.weights.h5`."""
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: it should ship in models/; retrain with "
                                f"`python -m models.train_fashion` to recreate it")
    alpha = float(metadata(meta).get("alpha", DEFAULT_ALPHA)) if meta.is_file() else DEFAULT_ALPHA
    model = build_model(alpha=alpha)
    model.load_weights(weights)
    return model


METADATA = METADATA_PATH  # back-compat alias: where the metadata JSON lives
