"""Per-channel bit allocation for MIXED_BITS payloads, calibrated offline.

Channels differ in what their errors cost: at the pooled vector of the default model, 1,144 of
1,280 channels can be sent as nothing (their calibration mean) for a small accuracy cost, while
a few dozen need 3-4 bits. So each channel gets its own width in 0..8 bits:

1. `fit_widths`: for every width, the [lo, hi] range among percentile candidates that
   minimises the mean squared error on the calibration activations, and that error (0 bits:
   the channel's mean, error = its variance).
2. `channel_importance` (TensorFlow): the mean squared gradient of the tail's loss at its own
   answer with respect to each channel, summed over positions: a second-order estimate of
   what a unit of squared error in that channel costs.
3. `allocate`: greedy, one bit at a time to the channel whose importance-weighted error drops
   most, until the budget (mean bits per value) is spent. With the error convex in the width
   this is the optimal integer allocation of the weighted error.

Which budget a split uses is measured, not predicted (see converter.profile): the predicted
error ranks channels well but says little about top-1 accuracy across budgets.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from splitinfer.codec import MAX_CHANNEL_BITS, ChannelRanges

#: Central shares (percent) cut from each side when fitting a range: 0 is min/max.
CLIP_PERCENTS = (0.0, 0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
FIT_MAX_ROWS = 65_536  # positions x samples used to fit ranges (a random subset beyond)


@dataclass(frozen=True)
class WidthFits:
    """Per width w (0..max_bits): the range per channel and its mean squared error."""

    lo: np.ndarray  # (max_bits + 1, C) float32; row 0 = hi row 0 = the channel mean
    hi: np.ndarray  # (max_bits + 1, C)
    mse: np.ndarray  # (max_bits + 1, C) float64, non-increasing in w per channel

    @property
    def max_bits(self) -> int:
        return self.lo.shape[0] - 1


def fit_widths(samples: np.ndarray, max_bits: int = MAX_CHANNEL_BITS, seed: int = 0) -> WidthFits:
    """Best range and its error for every width, per channel (last axis of `samples`)."""
    c = samples.shape[-1]
    flat = np.asarray(samples, dtype=np.float32).reshape(-1, c)
    if flat.shape[0] > FIT_MAX_ROWS:
        flat = flat[np.random.default_rng(seed).choice(flat.shape[0], FIT_MAX_ROWS, replace=False)]
    x = flat.astype(np.float64)
    lo_all = np.empty((max_bits + 1, c))
    hi_all = np.empty((max_bits + 1, c))
    mse = np.empty((max_bits + 1, c))
    mean = x.mean(axis=0)
    lo_all[0] = hi_all[0] = mean
    mse[0] = x.var(axis=0)
    cuts = np.percentile(x, [*CLIP_PERCENTS, *(100 - q for q in CLIP_PERCENTS)], axis=0)
    los, his = cuts[: len(CLIP_PERCENTS)], cuts[len(CLIP_PERCENTS):]
    for w in range(1, max_bits + 1):
        levels = (1 << w) - 1
        best = np.full(c, np.inf)
        best_lo, best_hi = los[0].copy(), his[0].copy()
        for lo, hi in zip(los, his):
            scale = np.maximum(hi - lo, 1e-30) / levels
            q = np.clip(np.rint((x - lo) / scale), 0, levels)
            err = ((lo + q * scale - x) ** 2).mean(axis=0)
            better = err < best
            best = np.where(better, err, best)
            best_lo = np.where(better, lo, best_lo)
            best_hi = np.where(better, hi, best_hi)
        lo_all[w], hi_all[w] = best_lo, best_hi
        mse[w] = np.minimum(best, mse[w - 1])  # a wider code never needs to do worse
    return WidthFits(lo_all.astype(np.float32), hi_all.astype(np.float32), mse)


def allocate(importance: np.ndarray, fits: WidthFits, mean_bits: float) -> np.ndarray:
    """Widths (uint8 per channel) spending round(mean_bits x C) bits, greedily by weighted gain."""
    c = importance.size
    widths = np.zeros(c, dtype=np.int64)
    budget = int(round(max(mean_bits, 0.0) * c))
    weight = np.maximum(np.asarray(importance, dtype=np.float64), 0.0)
    gain = lambda ch: weight[ch] * (fits.mse[widths[ch], ch] - fits.mse[widths[ch] + 1, ch])  # noqa: E731
    heap = [(-gain(ch), ch) for ch in range(c)]
    heapq.heapify(heap)
    for _ in range(min(budget, c * fits.max_bits)):
        _, ch = heapq.heappop(heap)
        widths[ch] += 1
        if widths[ch] < fits.max_bits:
            heapq.heappush(heap, (-gain(ch), ch))
    return widths.astype(np.uint8)


def allocation_ranges(fits: WidthFits, widths: np.ndarray) -> ChannelRanges:
    """The codec's view of an allocation: each channel's range at its width."""
    cols = np.arange(widths.size)
    lo = fits.lo[widths, cols]
    hi = np.maximum(fits.hi[widths, cols], lo)
    return ChannelRanges(lo=lo, hi=hi, bits=widths)


def channel_importance(tail, samples: np.ndarray, batch: int = 32) -> np.ndarray:
    """Mean over samples of sum over positions of (d loss / d activation)^2 per channel, where
    loss = -log p(the tail's own top-1 class): how much squared error each channel costs."""
    from splitinfer.quiet import import_tensorflow

    tf = import_tensorflow()
    c = samples.shape[-1]
    total = np.zeros(c)

    @tf.function(reduce_retracing=True)
    def grads(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = tail(x, training=False)
            probs = out if _looks_like_probabilities(out) else tf.nn.softmax(out)
            top = tf.argmax(probs, axis=-1)
            loss = -tf.reduce_sum(tf.math.log(tf.gather(probs, top, batch_dims=1) + 1e-9))
        return tape.gradient(loss, x)

    for start in range(0, len(samples), batch):
        g = grads(tf.constant(samples[start:start + batch])).numpy()
        total += (g.reshape(len(g), -1, c).astype(np.float64) ** 2).sum(axis=(0, 1))
    return total / max(len(samples), 1)


def _looks_like_probabilities(out) -> bool:
    """Whether the tail ends in a softmax (its last op), judged from the graph tensor's name."""
    name = getattr(getattr(out, "op", None), "type", "") or ""
    return name.lower() == "softmax"
