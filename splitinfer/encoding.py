"""How an activation (or a frame) travels: the one word for what the integer `bits` tag means.

On the wire and in profile.json a config's encoding is the integer `bits`: 2..8 is a uniform
width, 16 and 32 are float16 and float32, 1 (`MIXED_BITS`) means per-channel widths from an
allocation, and a config with no bits is the whole frame as JPEG (split "input") or nothing at
all (device-only, split "full"). Code that has to *interpret* that number asks an `Encoding`.
"""
from __future__ import annotations

from dataclasses import dataclass

from splitinfer.codec.header import BITS, FLOAT_DTYPES, MIXED_BITS, QUANTIZED_BITS

KINDS = ("quantized", "float", "per-channel", "jpeg", "none")


@dataclass(frozen=True)
class Encoding:
    kind: str  # one of KINDS
    bits: int | None = None  # the wire tag (None for jpeg and none)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Expected one of {KINDS}. Received: kind={self.kind!r}")

    @classmethod
    def of(cls, bits: int | None, split: str | None = None) -> "Encoding":
        """The encoding a `bits` tag stands for; without bits, `split` says JPEG or nothing."""
        if bits is None:
            return NONE if split == "full" else JPEG
        if bits == MIXED_BITS:
            return PER_CHANNEL
        if bits in FLOAT_DTYPES:
            return cls("float", bits)
        if bits in QUANTIZED_BITS:
            return cls("quantized", bits)
        raise ValueError(f"Expected bits in {(MIXED_BITS, *BITS)} or None. Received: bits={bits!r}")

    @classmethod
    def parse(cls, text: str) -> "Encoding":
        """A user's spelling: 4, 8-bit, float16, f32, per-channel, jpeg."""
        t = str(text).strip().lower().replace("_", "-")
        names = {"float16": 16, "f16": 16, "fp16": 16, "float32": 32, "f32": 32, "fp32": 32,
                 "per-channel": MIXED_BITS, "mixed": MIXED_BITS, "allocated": MIXED_BITS}
        if t in ("jpeg", "jpg"):
            return JPEG
        if t in names:
            return cls.of(names[t])
        try:
            return cls.of(int(t.removesuffix("-bit").removesuffix("bits").removesuffix("bit")))
        except ValueError:
            raise ValueError(f"Expected an encoding such as 2..8, float16, float32, per-channel or "
                             f"jpeg. Received: {text!r}") from None

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def label(self) -> str:
        """What tables, plots and logs print."""
        return {"quantized": f"{self.bits}-bit", "float": f"float{self.bits}",
                "per-channel": "per-channel", "jpeg": "JPEG", "none": "-"}[self.kind]

    def __str__(self) -> str:
        return self.label


PER_CHANNEL = Encoding("per-channel", MIXED_BITS)
FLOAT32 = Encoding("float", 32)
FLOAT16 = Encoding("float", 16)
JPEG = Encoding("jpeg")
NONE = Encoding("none")
