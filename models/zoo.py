"""Named models the converter can build without any download (`zoo:NAME`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class ZooEntry:
    build: Callable[[tuple[int, int, int]], Any]
    input_shape: tuple[int, int, int]
    description: str


def _applications(name: str):
    def build(input_shape):
        import keras

        cls = getattr(keras.applications, name)
        return cls(weights=None, input_shape=input_shape, classes=1000)

    return build


def _trained(name: str):
    def build(input_shape):
        from models import fashion

        if tuple(input_shape) != tuple(fashion.INPUT_SHAPE):
            raise ValueError(f"zoo:{name} is trained at {fashion.INPUT_SHAPE}. "
                             f"Received: input_shape={input_shape}.")
        return fashion.load_variant(name)

    return build


ZOO: dict[str, ZooEntry] = {
    "mobilenet_v2": ZooEntry(_applications("MobileNetV2"), (224, 224, 3), "keras.applications MobileNetV2, untrained"),
    "resnet50": ZooEntry(_applications("ResNet50"), (224, 224, 3), "keras.applications ResNet50, untrained"),
    "inception_v3": ZooEntry(_applications("InceptionV3"), (299, 299, 3), "keras.applications InceptionV3, untrained"),
    "efficientnet_b0": ZooEntry(_applications("EfficientNetB0"), (224, 224, 3), "keras.applications EfficientNetB0, untrained"),
    "fashion": ZooEntry(_trained("fashion"), (160, 160, 3),
                        "the bundled default: MobileNetV2 trained on shelf-camera scenes"),
    "fashion-inception": ZooEntry(_trained("fashion-inception"), (160, 160, 3),
                                  "a heavy InceptionV3 trained on the same scenes"),
}


TRAINED = ("fashion", "fashion-inception")  # trained on models.scenes: they share its test data


def build(name: str, input_shape: tuple[int, int, int] | None = None) -> Any:
    """Build zoo model `name`; `input_shape=None` means the model's usual one."""
    if name not in ZOO:
        raise ValueError(f"Expected one of {sorted(ZOO)}. Received: zoo:{name}")
    entry = ZOO[name]
    return entry.build(tuple(input_shape) if input_shape else entry.input_shape)


def labels(name: str) -> tuple[str, ...]:
    """Class names for zoo models that have them (only the trained default does)."""
    if name in TRAINED:
        from models import fashion_mnist

        return tuple(fashion_mnist.CLASS_NAMES)
    return ()
