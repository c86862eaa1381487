"""Link classes: the uplinks real fleets sit behind, from 3G to Wi-Fi and 5G.

Each class has a round-trip time and an uplink trace, each with its source. Classes backed by a
real recording (the Saturator cellular traces published with Mahimahi, Winstein et al., NSDI 2013)
read it from the shared traces folder when it is there. Otherwise, and for classes no public
uplink recording covers here (Wi-Fi, 5G), the trace is synthetic: 1-second capacities whose
quantiles follow the published statistics, correlated over time, from a documented seed.

Synthetic model (our assumption, not a source's): a Gaussian AR(1) process (correlation `PHI` per
second) mapped through the normal CDF onto a piecewise-linear quantile function with knots at
(0, 0), (0.1, p10), (0.5, p50), (0.9, p90), (1, p90 + (p90 - p50)), then scaled so its mean is
the published mean. Where a source gives only a median, p10 and p90 are set to 0.5x and 1.5x it.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scheduler.traces import Trace, TraceError, from_rates, read_mahimahi

PHI = 0.9             # 1-second autocorrelation of the synthetic capacity process
SPREAD_LOW, SPREAD_HIGH = 0.5, 1.5  # p10 and p90 as multiples of a median given alone
DEFAULT_TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"


@dataclass(frozen=True)
class LinkClass:
    name: str
    description: str
    rtt_ms: float
    rtt_source: str
    mean_mbps: float
    p10_mbps: float
    p50_mbps: float
    p90_mbps: float
    uplink_source: str
    recording: str | None = None   # path under the shared traces folder, when one exists

    def quantile_knots(self) -> tuple[np.ndarray, np.ndarray]:
        top = self.p90_mbps + (self.p90_mbps - self.p50_mbps)
        return (np.array([0.0, 0.1, 0.5, 0.9, 1.0]),
                np.array([0.0, self.p10_mbps, self.p50_mbps, self.p90_mbps, top]))


def _median_only(median: float) -> tuple[float, float, float]:
    return SPREAD_LOW * median, median, SPREAD_HIGH * median


SATURATOR = ("Saturator recording published with Mahimahi (Winstein et al., NSDI 2013); "
             "mean and 1-s p10/p50/p90 as ../shared/traces/README.md lists them")
OPENSIGNAL_US_4G_RTT = ("Opensignal USA 5G-readiness analysis, May 2019: 4G latency 44.1 to 66.4 ms "
                        "across operators")

LINKS: dict[str, LinkClass] = {
    link.name: link
    for link in (
        LinkClass("3g-evdo", "3G CDMA EV-DO, driving", 417.4,
                  "Y. Lee, Measured TCP Performance in CDMA 1x EV-DO Network: mean end-to-end "
                  "round trip 417.4 ms",
                  0.84, 0.23, 0.96, 1.19, SATURATOR, "cellular-uplink/Verizon-EVDO-driving.up"),
        LinkClass("3g-umts", "3G UMTS/HSPA, driving", 150.0,
                  "OpenSignal via FierceWireless, 2014: T-Mobile HSPA latency below 150 ms",
                  0.94, 0.30, 1.08, 1.42, SATURATOR, "cellular-uplink/TMobile-UMTS-driving.up"),
        LinkClass("lte-slow", "LTE at the cell edge, driving (frequent near-outages)", 66.4,
                  OPENSIGNAL_US_4G_RTT + " (the upper end)",
                  0.83, 0.01, 1.04, 1.16, SATURATOR, "cellular-uplink/ATT-LTE-driving.up"),
        LinkClass("lte", "LTE, short stationary session", 55.0,
                  OPENSIGNAL_US_4G_RTT + " (the midpoint)",
                  13.3, 3.5, 11.8, 25.4, SATURATOR, "cellular-uplink/TMobile-LTE-short.up"),
        LinkClass("5g", "5G, global median", 44.0,
                  "Ookla, 5G multi-server latency 44 ms, Q3 2023",
                  18.93, *_median_only(18.93),
                  "Ookla Speedtest: global median 5G upload 18.93 Mbit/s, Q3 2023 (reported by "
                  "tele.net.in, Dec 2023); spread assumed (p10/p90 = 0.5x/1.5x the median)"),
        LinkClass("wifi", "Wi-Fi on fixed broadband, global median", 9.0,
                  "Ookla Speedtest, fixed broadband median latency 9 ms, Q1 2023 (to the nearest "
                  "test server)",
                  34.92, *_median_only(34.92),
                  "Ookla Speedtest: global median fixed-broadband upload 34.92 Mbit/s, Q1 2023 "
                  "(Wi-Fi and wired tests together); spread assumed (p10/p90 = 0.5x/1.5x)"),
    )
}


def link_class(name: str) -> LinkClass:
    try:
        return LINKS[name]
    except KeyError:
        raise ValueError(f"unknown link class {name!r}: expected one of {sorted(LINKS)}") from None


def traces_dir() -> Path:
    """$SPLITINFER_TRACES, else ../shared/traces next to the repository."""
    return Path(os.environ.get("SPLITINFER_TRACES") or DEFAULT_TRACES)


def synthetic_rates(link: LinkClass, duration_s: float, seed: int) -> np.ndarray:
    """Per-second capacities (Mbit/s) following the class's published statistics."""
    n = max(1, int(math.ceil(duration_s)))
    rng = np.random.default_rng([seed, sum(map(ord, link.name))])
    z = np.empty(n)
    z[0] = rng.standard_normal()
    innovation = math.sqrt(1.0 - PHI * PHI)
    for i in range(1, n):
        z[i] = PHI * z[i - 1] + innovation * rng.standard_normal()
    u = 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))
    q, v = link.quantile_knots()
    rates = np.interp(u, q, v)
    return rates * (link.mean_mbps / rates.mean()) if rates.mean() > 0 else rates


def link_trace(link: LinkClass | str, *, duration_s: float = 600.0, seed: int = 0,
               folder: Path | None = None, real: bool = True) -> tuple[Trace, str]:
    """The class's trace and where it came from ('recording PATH' or 'synthetic seed N')."""
    link = link_class(link) if isinstance(link, str) else link
    if real and link.recording is not None:
        path = (folder or traces_dir()) / link.recording
        if path.is_file():
            trace = read_mahimahi(path)
            return Trace(link.name, trace.times_ms, trace.period_ms, trace.mss), f"recording {path}"
    if duration_s <= 1:
        raise TraceError(f"a synthetic {link.name} trace needs duration_s > 1, got {duration_s}")
    rates = synthetic_rates(link, duration_s, seed)
    trace = from_rates(f"{link.name}", np.arange(len(rates), dtype=float), rates,
                       float(len(rates)))
    return trace, f"synthetic seed {seed}"
