"""Uplink traces and a TCP-like model of how long an upload takes through one.

A trace is a list of delivery opportunities, Mahimahi style: at each timestamp one packet of
`mss` (1500) bytes may cross the bottleneck; the list repeats with a period (for a Mahimahi file,
its last timestamp). Read Mahimahi files (`*.up`: one integer millisecond a line), a two-column
`time_s mbit_s` text file (piecewise-constant rate), or build one in code.

Transfer model (`transfer`), deliberately simple and exact to compute:
  * the payload is ceil(nbytes / mss) packets (header overhead ignored);
  * slow start: with an initial window of `cwnd0` packets that doubles every round trip, packet
    k may not be sent before start + r(k) * rtt, where r(k) = floor(log2(k / cwnd0 + 1)); a
    connection kept busy carries its window over (`cwnd0` = the previous `cwnd_end`);
  * each packet takes the first opportunity at or after it may be sent that no earlier packet
    (of this or a previous transfer, see `min_index`) used; opportunities are never queued up,
    an unused one is lost, as in Mahimahi;
  * the server has the payload one-way delay (rtt / 2) after the last packet's opportunity and
    the sender learns it another rtt / 2 later.
Because packets of one round share a send time, the last packet's opportunity index is
    (P - 1) + max over rounds r of (max(first index at or after start + r * rtt, min_index) - m_r)
with m_r = cwnd0 * (2^r - 1) the first packet of round r: O(rounds) searchsorted calls, never a
loop over packets, so 1000-s traces and 100-configuration oracles stay fast.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from splitinfer.errors import SplitInferError

MSS = 1500


class TraceError(SplitInferError, ValueError):
    """A trace file is missing, empty or malformed."""


@dataclass(frozen=True, eq=False)
class Trace:
    name: str
    times_ms: np.ndarray      # sorted opportunity times within one period, float64 ms
    period_ms: float          # the list repeats every period_ms
    mss: int = MSS

    def __post_init__(self) -> None:
        if self.times_ms.size == 0:
            raise TraceError(f"trace {self.name!r} has no delivery opportunities")
        if not self.period_ms > 0:
            raise TraceError(f"trace {self.name!r} has period {self.period_ms} ms; expected > 0 "
                             f"(a Mahimahi trace's last timestamp must be positive)")

    @property
    def duration_s(self) -> float:
        return self.period_ms / 1e3

    @property
    def mean_bps(self) -> float:
        return self.times_ms.size * self.mss * 8.0 / (self.period_ms / 1e3)

    def index_at(self, t_s: float | np.ndarray) -> np.ndarray:
        """Index (counting across repeats) of the first opportunity at or after t_s."""
        t = np.asarray(t_s, dtype=np.float64) * 1e3
        n = self.times_ms.size
        cycles = np.floor(t / self.period_ms)
        k = np.searchsorted(self.times_ms, t - cycles * self.period_ms, side="left")
        return (cycles.astype(np.int64) * n + k).astype(np.int64)

    def time_of(self, index: int | np.ndarray) -> np.ndarray:
        """Time in seconds of opportunity `index`."""
        idx = np.asarray(index, dtype=np.int64)
        n = self.times_ms.size
        return (self.times_ms[idx % n] + (idx // n) * self.period_ms) / 1e3

    def rates_mbps(self, bin_s: float = 1.0, duration_s: float | None = None) -> np.ndarray:
        """Capacity per bin in Mbit/s (for plots and summaries)."""
        dur = self.duration_s if duration_s is None else duration_s
        nbins = max(1, int(math.ceil(dur / bin_s)))
        lo, hi = self.index_at(0.0), self.index_at(nbins * bin_s)
        t = self.time_of(np.arange(int(lo), int(hi)))
        counts = np.bincount(np.minimum((t / bin_s).astype(np.int64), nbins - 1),
                             minlength=nbins)
        return counts * self.mss * 8.0 / bin_s / 1e6


def read_mahimahi(path: Path) -> Trace:
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"trace file {path} not found")
    try:
        times = np.loadtxt(path, dtype=np.float64, ndmin=1)
    except ValueError as e:
        raise TraceError(f"{path} is not a Mahimahi trace (one integer millisecond per line): "
                         f"{e}") from None
    if times.size == 0:
        raise TraceError(f"{path} is empty: a Mahimahi trace has one timestamp per line")
    if times.ndim != 1:
        raise TraceError(f"{path} has {times.shape[1]} columns; Mahimahi traces have one")
    if np.any(np.diff(times) < 0) or times[0] < 0:
        raise TraceError(f"{path}: timestamps must be non-negative and non-decreasing")
    return Trace(path.stem, times, float(times[-1]))


def from_rates(name: str, starts_s: Sequence[float], mbps: Sequence[float], duration_s: float,
               mss: int = MSS) -> Trace:
    """Piecewise-constant capacity: mbps[i] from starts_s[i] to the next start (or duration_s)."""
    starts = np.asarray(starts_s, dtype=np.float64)
    rates = np.asarray(mbps, dtype=np.float64)
    if starts.size == 0 or starts.size != rates.size:
        raise TraceError(f"{name}: need as many start times as rates, got {starts.size} and "
                         f"{rates.size}")
    if np.any(np.diff(starts) <= 0) or starts[0] < 0 or np.any(rates < 0):
        raise TraceError(f"{name}: start times must increase from >= 0 and rates be >= 0")
    if duration_s <= starts[-1]:
        raise TraceError(f"{name}: duration {duration_s}s must exceed the last start "
                         f"{starts[-1]}s")
    ends = np.append(starts[1:], duration_s)
    pkt_bits = mss * 8.0
    out, carry = [], 0.0   # carry: bits already sent towards the next packet
    for a, b, r in zip(starts, ends, rates):
        bps = r * 1e6
        if bps <= 0:
            continue
        first = a + (pkt_bits - carry) / bps
        if first <= b:
            t = np.arange(first, b, pkt_bits / bps)
            out.append(t)
            carry = (b - t[-1]) * bps
        else:
            carry += (b - a) * bps
    if not out:
        raise TraceError(f"{name}: the rates never deliver a single packet")
    times = np.concatenate(out) * 1e3
    return Trace(name, times, float(duration_s * 1e3), mss)


def read_two_column(path: Path) -> Trace:
    """`time_s mbit_s` per line ('#' comments allowed); the last rate lasts one median step."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"trace file {path} not found")
    try:
        data = np.loadtxt(path, dtype=np.float64, ndmin=2, comments="#")
    except ValueError as e:
        raise TraceError(f"{path} is not a 'time_s mbit_s' trace: {e}") from None
    if data.shape[0] == 0 or data.shape[1] != 2:
        raise TraceError(f"{path}: expected two columns 'time_s mbit_s', got shape {data.shape}")
    t, r = data[:, 0], data[:, 1]
    step = float(np.median(np.diff(t))) if t.size > 1 else 1.0
    return from_rates(path.stem, t, r, float(t[-1] + step))


def read_trace(path: Path) -> Trace:
    """Mahimahi if every line holds one number, else the two-column format."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"trace file {path} not found: pass a Mahimahi .up file or a "
                         f"'time_s mbit_s' text file")
    with path.open() as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                return read_two_column(path) if len(line.split()) == 2 else read_mahimahi(path)
    raise TraceError(f"{path} is empty")


def constant(mbps: float, duration_s: float = 60.0) -> Trace:
    return from_rates(f"const-{mbps:g}M", [0.0], [mbps], duration_s)


def step(before_mbps: float, after_mbps: float, at_s: float, duration_s: float) -> Trace:
    return from_rates(f"step-{before_mbps:g}-{after_mbps:g}M", [0.0, at_s],
                      [before_mbps, after_mbps], duration_s)


def outage(mbps: float, start_s: float, end_s: float, duration_s: float) -> Trace:
    """Full capacity, nothing from start_s to end_s, then recovery."""
    return from_rates(f"outage-{mbps:g}M-{start_s:g}-{end_s:g}s", [0.0, start_s, end_s],
                      [mbps, 0.0, mbps], duration_s)


def phases(name: str, parts: Sequence[tuple[Trace, float]]) -> Trace:
    """One trace from consecutive phases: each (trace, seconds) contributes its first seconds
    (repeating if it is shorter). For a link with fast and slow stretches."""
    if not parts:
        raise TraceError(f"{name}: need at least one phase")
    times, offset = [], 0.0
    for trace, seconds in parts:
        if not seconds > 0:
            raise TraceError(f"{name}: every phase needs a positive length, got {seconds}")
        end = trace.index_at(seconds)
        idx = np.arange(int(end))
        t = trace.time_of(idx) * 1e3 if idx.size else np.empty(0)
        times.append(offset + t[t < seconds * 1e3])
        offset += seconds * 1e3
    return Trace(name, np.concatenate(times), offset, parts[0][0].mss)


@dataclass(frozen=True)
class Transfer:
    start_s: float
    last_delivery_s: float   # the last packet crosses the bottleneck
    done_s: float            # the server has every byte (one-way delay later)
    acked_s: float           # the sender knows (a full rtt after the last delivery)
    next_index: int          # first opportunity a following transfer may use
    cwnd_end: int            # window at the end, to carry over on a busy connection


def _rounds(packets: np.ndarray, cwnd0: int | np.ndarray) -> np.ndarray:
    return np.floor(np.log2((packets - 1) / cwnd0 + 1.0)).astype(np.int64)


def last_index(trace: Trace, start_s: np.ndarray, nbytes: np.ndarray, rtt_s: float,
               cwnd0: int | np.ndarray = 10, min_index: int | np.ndarray = 0) -> np.ndarray:
    """Opportunity index of the last packet for each (start, nbytes): the formula above."""
    nb = np.atleast_1d(np.asarray(nbytes, dtype=np.float64))
    start = np.atleast_1d(np.asarray(start_s, dtype=np.float64))
    if start.size != nb.size:
        start = np.broadcast_to(start, nb.shape) if start.size == 1 else start
        nb = np.broadcast_to(nb, start.shape) if nb.size == 1 else nb
    packets = np.maximum(np.ceil(nb * (1.0 / trace.mss)), 1.0)
    cw = np.asarray(cwnd0, dtype=np.float64)
    if np.any(cw < 1):
        raise ValueError(f"cwnd0 must be >= 1 packet, got {cwnd0}")
    rounds = np.floor(np.log2((packets - 1.0) / cw + 1.0))
    rmax = int(rounds.max()) if rounds.size else 0
    r = np.arange(rmax + 1, dtype=np.float64)
    t = (start[:, None] + r[None, :] * rtt_s) * 1e3                 # (n, rounds) in ms
    n = trace.times_ms.size
    cycles = np.floor(t / trace.period_ms)
    idx = cycles * n + np.searchsorted(trace.times_ms, t - cycles * trace.period_ms)
    mi = np.asarray(min_index, dtype=np.float64)
    idx = np.maximum(idx, mi[:, None] if mi.ndim else mi)
    cand = idx - (cw[:, None] if cw.ndim else cw) * (2.0 ** r[None, :] - 1.0)
    cand[r[None, :] > rounds[:, None]] = -np.inf
    return (cand.max(axis=1) + packets - 1.0).astype(np.int64)


def transfer(trace: Trace, start_s: float, nbytes: float, rtt_s: float, *, cwnd0: int = 10,
             min_index: int = 0) -> Transfer:
    """When an upload of nbytes started at start_s is delivered (see the module docstring)."""
    if nbytes < 0 or rtt_s < 0:
        raise ValueError(f"nbytes and rtt_s must be >= 0, got {nbytes}, {rtt_s}")
    if nbytes == 0:
        return Transfer(start_s, start_s, start_s + rtt_s / 2, start_s + rtt_s,
                        max(min_index, int(trace.index_at(start_s))), cwnd0)
    if cwnd0 < 1:
        raise ValueError(f"cwnd0 must be >= 1 packet, got {cwnd0}")
    # scalar version of last_index(): a few searchsorted calls, no temporary arrays
    packets = max(1, math.ceil(nbytes / trace.mss))
    rounds = int(math.floor(math.log2((packets - 1) / cwnd0 + 1.0)))
    times, n, period = trace.times_ms, trace.times_ms.size, trace.period_ms
    best = None
    for r in range(rounds + 1):
        t = (start_s + r * rtt_s) * 1e3
        cyc = math.floor(t / period)
        idx = max(cyc * n + int(np.searchsorted(times, t - cyc * period)), min_index)
        cand = idx - cwnd0 * (2 ** r - 1)
        best = cand if best is None or cand > best else best
    j = best + packets - 1
    t_last = max(float(times[j % n] + (j // n) * period) / 1e3, start_s)
    cwnd_end = min(cwnd0 * 2 ** (rounds + 1), 1 << 16)
    return Transfer(start_s, t_last, t_last + rtt_s / 2, t_last + rtt_s, j + 1, cwnd_end)
