"""Every head the scheduler may pick, loaded and allocated up front, so switching is a lookup.

LiteRT interpreters are not thread-safe, so a pool is used from one thread; the runtime keeps a
second pool (full model only) for finishing frames on the device from another thread.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from splitinfer.litert import HeadFiles, RuntimeInfo
from splitinfer.bundle.manifest import FULL, Manifest
from splitinfer.bundle.profile import Profile


@dataclass
class _Loaded:
    run: Callable[[np.ndarray], np.ndarray]
    load_ms: float


class HeadPool:
    """Allocated interpreters by split name (`full` is the whole model)."""

    def __init__(
        self,
        bundle: str | Path,
        manifest: Manifest,
        splits: Sequence[str] | None = None,
        *,
        num_threads: int | None = None,
        max_heads: int | None = None,
        priority: Sequence[str] | None = None,
        include_full: bool = True,
    ) -> None:
        """Load `splits` (default: every split with a head), at most `max_heads` of them.

        With `max_heads`, the first ones in `priority` (most useful first) are kept; the rest are
        listed in `dropped`, so the caller can tell the scheduler and the user.
        """
        self.bundle = Path(bundle)
        self.manifest = manifest
        wanted = [s.name for s in manifest.splits if s.head] if splits is None else list(splits)
        for name in wanted:
            split = manifest.split(name)  # KeyError names the valid splits
            if split.head is None:
                raise ValueError(f"Split {name!r} has no head (it is cloud-only).")
        self.dropped: list[str] = []
        if max_heads is not None and len(wanted) > max_heads:
            order = [s for s in (priority or []) if s in wanted] + [s for s in wanted if s not in (priority or [])]
            keep = set(order[:max_heads])
            self.dropped = [s for s in wanted if s not in keep]
            wanted = [s for s in wanted if s in keep]
        self._pool: dict[str, _Loaded] = {}
        self._files = HeadFiles(num_threads)  # one interpreter for all heads in heads.tflite
        self.info: RuntimeInfo | None = None
        for name in wanted:
            split = manifest.split(name)
            self._load(name, self.bundle / split.head, split.head_signature)
        if include_full:
            self._load(FULL, self.bundle / manifest.full, None)

    @property
    def loaded(self) -> list[str]:
        return [n for n in self._pool if n != FULL]

    def has(self, split: str) -> bool:
        return split in self._pool

    def load_ms(self, split: str) -> float:
        return self._pool[split].load_ms

    def run(self, split: str, frame: np.ndarray) -> np.ndarray:
        """The activation at `split` (or the model output for `full`) for one HxWxC frame."""
        try:
            loaded = self._pool[split]
        except KeyError:
            raise KeyError(f"Head {split!r} is not loaded. Loaded: {sorted(self._pool)}") from None
        return loaded.run(np.ascontiguousarray(frame, dtype=np.float32)[None])[0]

    def close(self) -> None:
        self._pool.clear()
        self._files = HeadFiles()

    def __enter__(self) -> "HeadPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _load(self, name: str, path: Path, signature: str | None) -> None:
        """The first head of a shared file pays for loading the file (its load_ms)."""
        t0 = time.perf_counter()
        run = self._files.head(path, signature)
        self.info = self._files.interpreter(path)[1]
        self._pool[name] = _Loaded(run, (time.perf_counter() - t0) * 1e3)


def useful_heads(manifest: Manifest, profile: Profile | None, max_drop_pp: float = 1.0) -> list[str]:
    """Splits ordered by usefulness: first those no other split beats on both device compute
    and bytes (within the accuracy budget), then the rest spread by compute."""
    heads = [s for s in manifest.splits if s.head]
    best_bytes: dict[str, float] = {}
    for c in (profile.configs if profile is not None else ()):
        if c.drop_pp <= max_drop_pp:
            best_bytes[c.split] = min(best_bytes.get(c.split, float("inf")), c.bytes_mean)
    if not best_bytes:
        best_bytes = {s.name: float(np.prod(s.shape)) for s in heads}
    front, rest = [], []
    for s in heads:
        b = best_bytes.get(s.name, float("inf"))
        dominated = any(
            o.head_flops <= s.head_flops and best_bytes.get(o.name, float("inf")) < b
            for o in heads if o.name != s.name
        )
        (rest if dominated else front).append(s.name)
    return front + rest
