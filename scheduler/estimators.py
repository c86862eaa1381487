"""Online estimators fed by what the edge sees: uploads, RTTs, its own and the cloud's latencies.

Pure functions do the maths (so tests can state properties of them); small classes keep the
recent samples.
"""
from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Sequence


def harmonic_mean(rates: Sequence[float], weights: Sequence[float] | None = None) -> float:
    """Weighted harmonic mean. With weights = bytes it is total bytes / total time, the rate a
    stream of such transfers actually got; one fast outlier barely moves it."""
    if not rates:
        raise ValueError("harmonic_mean of no samples")
    if weights is None:
        weights = [1.0] * len(rates)
    if len(weights) != len(rates):
        raise ValueError(f"{len(rates)} rates but {len(weights)} weights")
    if any(r <= 0 for r in rates) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError("harmonic_mean needs rates > 0 and weights >= 0 with a positive sum")
    return sum(weights) / sum(w / r for r, w in zip(rates, weights))


def robust_rate(rates: Sequence[float], weights: Sequence[float], clip: float = 4.0) -> float:
    """Harmonic mean after clipping each rate into [median/clip, median*clip].

    The harmonic mean alone is dragged to zero by one stalled transfer; clipping around the
    median bounds what any single sample can do while keeping the estimate within
    [min(rates), max(rates)].
    """
    srt = sorted(rates)
    n = len(srt)
    med = srt[n // 2] if n % 2 else math.sqrt(srt[n // 2 - 1] * srt[n // 2])
    lo, hi = med / clip, med * clip
    return harmonic_mean([min(max(r, lo), hi) for r in rates], weights)


def size_slope_rate(nbytes: Sequence[float], seconds: Sequence[float], min_samples: int = 8,
                    min_spread: float = 1.25, min_pairs: int = 8) -> float | None:
    """The link's rate from how upload time grows with upload size: bits per second over the
    Theil-Sen slope of time against bytes (the median slope of the pairs whose sizes differ), or
    None when the sizes do not spread enough to tell.

    Whatever every upload pays alike moves the line, not its slope: the round trip, overheads no
    timer sees, and the first bytes a token bucket lets through at line rate. Subtracting a
    measured RTT instead leaves those in each small upload's rate: on the demo's tc link at a
    constant 8 Mbit/s, 3-8 kB JPEGs read 10-35 Mbit/s each (their 3-6 ms transfers within the
    ping's own jitter, 1.6 kB of each free), and the estimate sat at 12-20 Mbit/s, while their
    slope gave 7.7. Needs at least `min_samples` uploads whose largest third is `min_spread`
    times the smallest third (median bytes), and at least `min_pairs` pairs, two thirds of them
    rising."""
    n = len(nbytes)
    if n != len(seconds):
        raise ValueError(f"{n} sizes but {len(seconds)} times")
    if n < min_samples:
        return None
    order = sorted(range(n), key=lambda i: nbytes[i])
    third = max(n // 3, 1)
    low, high = [nbytes[i] for i in order[:third]], [nbytes[i] for i in order[-third:]]
    if statistics.median(high) < min_spread * statistics.median(low):
        return None
    gap = 0.1 * statistics.median(nbytes)  # pairs closer in size than this say more about jitter
    slopes = [(seconds[j] - seconds[i]) / (nbytes[j] - nbytes[i])
              for a, i in enumerate(order) for j in order[a + 1:] if nbytes[j] - nbytes[i] > gap]
    if len(slopes) < min_pairs or sum(x > 0 for x in slopes) < 2 * len(slopes) / 3:
        return None
    slope = statistics.median(slopes)
    return 8.0 / slope if slope > 0 else None


@dataclass(frozen=True)
class UploadSample:
    t_s: float
    nbytes: float
    seconds: float     # transfer time net of one RTT
    rate_bps: float
    small: bool
    gross_s: float     # the time as measured, RTT included (`size_slope_rate`)


class BandwidthEstimator:
    """Uplink bandwidth from recent transfers.

    - Each upload gives rate = bytes * 8 / (seconds - rtt): `seconds` is first byte sent to the
      server's acknowledgement, which includes one round trip; `rtt` should be the minimum
      recent RTT (jitter then only lengthens the transfer, so rates err low, never high).
    - A transfer whose time net of the RTT is under `min_net_s` (or a quarter of the RTT) is
      dominated by RTT jitter and slow start, not by the link ("small"). Classifying by the
      outcome censors the fast ones, so an estimate from the long ones alone is biased low
      (on the TMobile LTE trace at 10-25 Mbit/s it sat at 2-5 Mbit/s: a 6 kB JPEG is "long"
      only when it hit a gap). So once any long sample is in the window, every sample counts
      in the byte-weighted harmonic mean (total bytes / total time: a small payload weighs
      little, a burst of one cannot swing it); with only small samples, they can only raise
      the estimate (or, consistently above it, signal a step up).
    - When the window's sizes spread enough, their time-vs-size slope is the estimate
      (`size_slope_rate`): it needs no RTT subtracted, so it holds for small uploads too, which
      then measure the link (`last_full_t_s`) instead of bounding it.
    - Only samples count, not wall time, so idle gaps (device-only stretches) do not read as zero
      bandwidth.
    - The window holds at most `window` samples no older than `max_age_s` before the newest.
      When the last `change_samples` samples all differ from the estimate by more than
      `change_factor` in the same direction, the older ones are dropped: a step change is
      followed after three transfers instead of a full window, while one or two outliers (a
      burst or a stall of a bursty cellular link) are not enough.
    """

    def __init__(self, window: int = 24, max_age_s: float = 2.0, min_net_s: float = 0.010,
                 clip: float = 4.0, change_samples: int = 3, change_factor: float = 2.5,
                 min_bytes: float = 3000) -> None:
        if window < 1 or change_samples < 1:
            raise ValueError(f"window and change_samples must be >= 1, got {window}, "
                             f"{change_samples}")
        self.window, self.max_age_s, self.min_net_s = window, max_age_s, min_net_s
        self.clip, self.change_samples, self.change_factor = clip, change_samples, change_factor
        self.min_bytes = min_bytes  # short transfers up to this size cannot raise the estimate
        self._samples: deque[UploadSample] = deque(maxlen=window)
        self._estimate: float | None = None
        self.last_t_s: float | None = None
        self.last_full_t_s: float | None = None  # newest sample that measured the link (long, or sloped)

    def add(self, t_s: float, nbytes: float, seconds: float, rtt_s: float = 0.0) -> None:
        if nbytes <= 0 or seconds <= 0 or not math.isfinite(seconds):
            raise ValueError(f"an upload sample needs nbytes > 0 and 0 < seconds < inf, got "
                             f"nbytes={nbytes}, seconds={seconds}")
        rtt_s = max(rtt_s, 0.0)
        raw = seconds - rtt_s
        small = raw < self.full_net_s(rtt_s)
        # with the minimum RTT subtracted, what is left is the transfer plus this request's
        # jitter, never less than the transfer
        net = max(raw, 1e-3) if small else max(raw, 0.25 * seconds)
        s = UploadSample(t_s, nbytes, net, nbytes * 8.0 / net, small, seconds)
        self._samples.append(s)
        self.last_t_s = t_s
        while self._samples and self._samples[0].t_s < t_s - self.max_age_s:
            self._samples.popleft()
        est = self._estimate
        recent = list(self._samples)[-self.change_samples:]
        sloped = self._sloped()
        if est is not None and len(recent) == self.change_samples and (
                # a lower bound above the estimate proves it faster (unless it is a packet or
                # two, or sizes spread enough for a slope: then a small upload's rate carries
                # the RTT's error and the burst, `size_slope_rate`); only full samples prove it
                # slower
                all(x.rate_bps > est * self.change_factor
                    and (not x.small or sloped is None and x.nbytes > self.min_bytes) for x in recent)
                or all(not x.small and x.rate_bps < est / self.change_factor for x in recent)):
            self._samples = deque(recent, maxlen=self.window)
            sloped = self._sloped()
        if not small or sloped is not None:  # the link is measured, not only bounded
            self.last_full_t_s = t_s
        self._estimate = sloped if sloped is not None else self._compute()

    def _sloped(self) -> float | None:
        return size_slope_rate([x.nbytes for x in self._samples], [x.gross_s for x in self._samples])

    def _compute(self) -> float | None:
        if any(not x.small for x in self._samples):
            every = list(self._samples)
            return robust_rate([x.rate_bps for x in every], [x.nbytes for x in every], self.clip)
        # only lower bounds: the tightest one (their median, so one lucky sample does not
        # decide), never below what is already known. A transfer of one or two packets proves
        # nothing about the link's rate: a token bucket lets it through at line rate after an
        # idle moment (on the demo's tc link 1.1 kB frames crossed 1 ms past the minimum RTT at
        # ~1 Mbit/s and read as 8.8 Mbit/s), so only larger ones may raise the estimate.
        lows = sorted(x.rate_bps for x in self._samples if x.nbytes > self.min_bytes)
        if not lows:
            return self._estimate if self._estimate is not None else _first_guess(self._samples)
        rate = lows[len(lows) // 2]
        return rate if self._estimate is None else max(rate, self._estimate)

    def full_net_s(self, rtt_s: float) -> float:
        """The shortest transfer (RTT taken out) that measures the link rather than bounding it:
        anything shorter is within what the RTT's own jitter can hide."""
        return max(self.min_net_s, 0.25 * max(rtt_s, 0.0))

    @property
    def estimate_bps(self) -> float | None:
        return self._estimate

    def __len__(self) -> int:
        return len(self._samples)


def _first_guess(samples) -> float | None:
    """With nothing else known, the median lower bound of even tiny transfers (None if none)."""
    rates = sorted(x.rate_bps for x in samples)
    return rates[len(rates) // 2] if rates else None


class Ewma:
    """Exponentially weighted mean; the first sample initialises it."""

    def __init__(self, alpha: float, initial: float | None = None) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.value = initial
        self.n = 0

    def add(self, x: float) -> float:
        if not math.isfinite(x):
            raise ValueError(f"EWMA sample must be finite, got {x}")
        self.value = x if self.value is None or self.n == 0 else (
            self.value + self.alpha * (x - self.value))
        self.n += 1
        return self.value
