"""An emulated cellular uplink between the edge and the cloud, following a bandwidth trace.

Two kinds, same interface:
- `NetnsLink` (root, `ip` and `tc` present): the cloud runs in its own network namespace behind a
  veth pair; a `tc tbf` qdisc on the edge side shapes every uplink byte and is re-rated along the
  trace (`TbfLink`). Real kernel TCP, real queues. `FleetNet` gives each device of a fleet a
  namespace and an uplink of its own into the cloud's.
- `TokenBucketLink` (anywhere): the upload is held in process until the trace's TCP-like model
  (scheduler.traces.transfer) says its last byte would have crossed the link.
This kernel has no `netem`, so in both kinds the round-trip time is added by the edge: the
request waits one RTT before it is sent (request and answer delay lumped together).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from typing import Callable

import numpy as np

from scheduler.traces import Trace, transfer
from splitinfer.errors import CloudError

MIN_RATE_KBIT = 8  # tbf cannot be rate 0; an outage is a link this slow
BURST_S = 0.001  # the tbf bucket holds this much time of traffic (see tbf_args)


class TokenBucketLink:
    kind = "in-process token bucket (scheduler.traces model)"
    host = "127.0.0.1"

    def __init__(self, trace: Trace, rtt_ms: float = 40.0, clock: Callable[[], float] = time.monotonic):
        self.trace, self.rtt_s, self.clock = trace, rtt_ms / 1e3, clock
        self._lock = threading.Lock()
        self._next_index = 0
        self.timeouts = 0  # uploads given up because the link could not carry them in time
        self.t0 = clock()

    def start(self) -> None:
        """Restart the trace at its beginning (each run replays the same conditions)."""
        with self._lock:
            self.t0 = self.clock()
            self._next_index = 0

    def elapsed_s(self) -> float:
        return self.clock() - self.t0

    def rate_mbps(self, t_s: float | None = None) -> float:
        t = self.elapsed_s() if t_s is None else t_s
        return float(self.trace.rates_mbps(1.0, duration_s=t + 1.0)[int(t)])

    def before_send(self, nbytes: int, timeout_s: float | None = None) -> None:
        """Hold the upload until the trace has carried it; like a socket, give up after
        `timeout_s` (CloudError "timeout") when the link cannot carry it in time."""
        with self._lock:
            now = self.elapsed_s()
            tr = transfer(self.trace, now, nbytes, self.rtt_s, min_index=self._next_index)
            if timeout_s is None or tr.acked_s - now <= timeout_s:
                self._next_index = tr.next_index
        if timeout_s is not None and tr.acked_s - now > timeout_s:
            self.timeouts += 1
            time.sleep(max(0.0, timeout_s))
            raise CloudError("timeout", f"the emulated link could not carry {nbytes} bytes within "
                                        f"{timeout_s:.2f} s")
        delay = tr.acked_s - self.elapsed_s()  # the answer comes back half an RTT later
        if delay > 0:
            time.sleep(delay)

    def wrap(self, argv: list[str]) -> list[str]:
        return argv

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class TbfLink:
    """A `tc tbf` qdisc on an existing interface, re-rated along the trace from `start`: the
    shaping half of NetnsLink, also run by a fleet device inside its own namespace."""

    kind = "tc tbf on a veth interface"

    def __init__(self, trace: Trace, dev: str, rtt_ms: float = 40.0, update_s: float = 0.25):
        self.trace, self.dev, self.rtt_s, self.update_s = trace, dev, rtt_ms / 1e3, update_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.t0 = time.monotonic()

    def start(self) -> None:
        """Restart the trace at its beginning and keep the qdisc's rate following it."""
        self.stop_updates()
        self._stop.clear()
        self.t0 = time.monotonic()
        self._set_rate(self.rate_mbps(0.0))
        self._thread = threading.Thread(target=self._follow, daemon=True, name="link-follow")
        self._thread.start()

    def elapsed_s(self) -> float:
        return time.monotonic() - self.t0

    def rate_mbps(self, t_s: float | None = None) -> float:
        t = self.elapsed_s() if t_s is None else t_s
        bins = self.trace.rates_mbps(self.update_s, duration_s=t + self.update_s)
        return float(bins[min(int(t / self.update_s), len(bins) - 1)])

    def before_send(self, nbytes: int, timeout_s: float | None = None) -> None:
        """The RTT (this kernel has no netem); the bytes themselves meet the real qdisc."""
        time.sleep(self.rtt_s if timeout_s is None else min(self.rtt_s, timeout_s))

    def stop_updates(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def close(self) -> None:
        self.stop_updates()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def add_qdisc(self) -> None:
        _run(["tc", "qdisc", "add", "dev", self.dev, "root", "handle", "1:", "tbf",
              *tbf_args(self.rate_mbps(0.0))])

    def _set_rate(self, mbps: float) -> None:
        subprocess.run(["tc", "qdisc", "change", "dev", self.dev, "root", "handle", "1:", "tbf",
                        *tbf_args(mbps)], capture_output=True)

    def _follow(self) -> None:
        last = None
        while not self._stop.wait(self.update_s / 2):
            rate = round(self.rate_mbps(), 3)
            if rate != last:
                self._set_rate(rate)
                last = rate


def tbf_args(mbps: float) -> list[str]:
    kbit = max(int(mbps * 1000), MIN_RATE_KBIT)
    # A burst of 1 ms of traffic, at least one full packet (tbf needs an MTU). Each burst byte
    # crosses at line rate after an idle moment, which the trace does not have: with 10 ms, at
    # 5 Mbit/s every payload up to 6 kB crossed in 0.5 ms (read as up to 100 Mbit/s by the
    # edge's estimator); with 1 ms, 8 kB takes 11.2 ms (12.8 ideal) and 64 kB 104.8 (102.4),
    # and 30 Mbit/s is still reached (29.6 on 64 kB).
    burst = max(1600, int(kbit * 1000 / 8 * BURST_S))
    return ["rate", f"{kbit}kbit", "burst", str(burst), "latency", "4s"]


def netns_available() -> bool:
    """Root, `ip` and `tc`, and namespaces that can be made here."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"):
        return False
    probe = f"sip{os.getpid() % 100000}"
    try:
        _run(["ip", "netns", "add", probe])
        _run(["ip", "netns", "del", probe])
        return True
    except (subprocess.CalledProcessError, OSError):
        return False


class NetnsLink(TbfLink):
    """The cloud in its own namespace behind a veth pair, the edge's side shaped."""

    kind = "tc tbf on a veth pair into a network namespace"

    def __init__(self, trace: Trace, rtt_ms: float = 40.0, update_s: float = 0.25, name: str | None = None):
        tag = name or f"si{os.getpid() % 100000}"
        self.ns, self.peer = tag, f"{tag}c"
        super().__init__(trace, f"{tag}e", rtt_ms, update_s)
        octet = os.getpid() % 200 + 20
        self.edge_ip, self.host = f"10.250.{octet}.1", f"10.250.{octet}.2"
        self._setup()

    available = staticmethod(netns_available)

    def wrap(self, argv: list[str]) -> list[str]:
        """Run a command inside the cloud's namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def close(self) -> None:
        self.stop_updates()
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.dev], capture_output=True)

    def _setup(self) -> None:
        self.close()
        try:
            _run(["ip", "netns", "add", self.ns])
            _run(["ip", "link", "add", self.dev, "type", "veth", "peer", "name", self.peer])
            _run(["ip", "link", "set", self.peer, "netns", self.ns])
            _run(["ip", "addr", "add", f"{self.edge_ip}/30", "dev", self.dev])
            _run(["ip", "link", "set", self.dev, "up"])
            _run(["ip", "netns", "exec", self.ns, "ip", "addr", "add", f"{self.host}/30", "dev", self.peer])
            _run(["ip", "netns", "exec", self.ns, "ip", "link", "set", self.peer, "up"])
            _run(["ip", "netns", "exec", self.ns, "ip", "link", "set", "lo", "up"])
            self.add_qdisc()
        except (subprocess.CalledProcessError, OSError):
            self.close()
            raise


class FleetNet:
    """A namespace for the cloud with a bridge, and one namespace per device with a veth pair
    into that bridge: every device has an uplink of its own (its qdisc is added here, and
    re-rated by the device itself with a TbfLink on `device_dev`). The host reaches the cloud
    over one more, unshaped veth pair (the driver's readiness and load polls); nothing listens
    on the host's own interfaces."""

    kind = "a network namespace per device, tc tbf on each uplink"

    def __init__(self, n: int, name: str | None = None):
        if n > 250:
            raise ValueError(f"FleetNet holds at most 250 devices, got {n}")
        tag = name or f"sf{os.getpid() % 10000}"
        self.tag, self.n = tag, n
        self.cloud_ns, self.host = f"{tag}c", "10.251.0.1"
        self._setup()

    def device_ns(self, i: int) -> str:
        return f"{self.tag}d{i}"

    def device_dev(self, i: int) -> str:
        return f"{self.tag}v{i}"

    def wrap(self, argv: list[str]) -> list[str]:
        """Run a command inside the cloud's namespace."""
        return ["ip", "netns", "exec", self.cloud_ns, *argv]

    def wrap_device(self, i: int, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.device_ns(i), *argv]

    def close(self) -> None:
        for ns in [self.cloud_ns, *(self.device_ns(i) for i in range(self.n))]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # its links go too
        subprocess.run(["ip", "link", "del", f"{self.tag}m"], capture_output=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _setup(self) -> None:
        self.close()
        cloud = ["ip", "netns", "exec", self.cloud_ns]
        try:
            _run(["ip", "netns", "add", self.cloud_ns])
            _run([*cloud, "ip", "link", "add", "br0", "type", "bridge"])
            _run([*cloud, "ip", "addr", "add", f"{self.host}/16", "dev", "br0"])
            _run([*cloud, "ip", "link", "set", "br0", "up"])
            _run([*cloud, "ip", "link", "set", "lo", "up"])
            monitor, monitor_peer = f"{self.tag}m", f"{self.tag}mp"
            _run(["ip", "link", "add", monitor, "type", "veth", "peer", "name", monitor_peer])
            _run(["ip", "link", "set", monitor_peer, "netns", self.cloud_ns])
            _run([*cloud, "ip", "link", "set", monitor_peer, "master", "br0"])
            _run([*cloud, "ip", "link", "set", monitor_peer, "up"])
            _run(["ip", "addr", "add", "10.251.0.254/16", "dev", monitor])
            _run(["ip", "link", "set", monitor, "up"])
            for i in range(self.n):
                ns, dev, peer = self.device_ns(i), self.device_dev(i), f"{self.tag}p{i}"
                inside = ["ip", "netns", "exec", ns]
                _run(["ip", "netns", "add", ns])
                _run(["ip", "link", "add", dev, "type", "veth", "peer", "name", peer])
                _run(["ip", "link", "set", dev, "netns", ns])
                _run(["ip", "link", "set", peer, "netns", self.cloud_ns])
                _run([*cloud, "ip", "link", "set", peer, "master", "br0"])
                _run([*cloud, "ip", "link", "set", peer, "up"])
                _run([*inside, "ip", "addr", "add", f"10.251.1.{i + 2}/16", "dev", dev])
                _run([*inside, "ip", "link", "set", dev, "up"])
                _run([*inside, "ip", "link", "set", "lo", "up"])
                _run([*inside, "tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "tbf",
                      *tbf_args(1000.0)])  # the device re-rates it along its trace
        except (subprocess.CalledProcessError, OSError):
            self.close()
            raise


def open_link(trace: Trace, rtt_ms: float = 40.0, prefer_netns: bool = True):
    """The most real link this machine allows."""
    if prefer_netns and NetnsLink.available():
        try:
            return NetnsLink(trace, rtt_ms)
        except (subprocess.CalledProcessError, OSError):
            pass
    return TokenBucketLink(trace, rtt_ms)


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def measured_mbps(samples: list[tuple[float, int, float]]) -> float:
    """Goodput of (t, bytes, seconds) upload samples: total bytes over total time."""
    if not samples:
        return 0.0
    b = np.array([s[1] for s in samples], dtype=float)
    s = np.array([s[2] for s in samples], dtype=float)
    return float(b.sum() * 8 / s.sum() / 1e6)
