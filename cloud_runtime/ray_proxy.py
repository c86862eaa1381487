"""Ray's HAProxy front for a Ray instance this server starts: private paths, free ports, and
no HAProxy left behind.

Why HAProxy: Ray's Python proxy spends about as much CPU per request as a gunicorn worker spends
answering it (`python -m benchmarks.scale_out`); with HAProxy (Ray 2.60's
RAY_SERVE_ENABLE_HA_PROXY with direct ingress) the replicas answer HTTP themselves and a C
balancer spreads the connections. Ray starts HAProxy on fixed ports and paths, which collide
when two instances share a machine, and leaves it running after `serve.shutdown`: each
instance here gets its own directory and ports, and its HAProxy is stopped with it.
"""
from __future__ import annotations

import os
import signal
import socket
import tempfile
from pathlib import Path

PORT_RANGE = 200  # ports for the replicas' own listeners, HTTP and gRPC each


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_range(size: int, low: int = 20000, high: int = 60000) -> int:
    """A start port whose next `size` ports nobody listens on (checked, not reserved)."""
    import random

    rng = random.Random()
    for _ in range(50):
        start = rng.randrange(low, high - size)
        if all(_port_free(p) for p in range(start, start + size, 10)):
            return start
    raise RuntimeError(f"no free range of {size} ports between {low} and {high}")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


def haproxy_environment() -> tuple[dict[str, str], Path]:
    """The environment that turns HAProxy on for a Ray instance started by this process, with a
    private directory (returned) and free ports."""
    # short: HAProxy takes socket paths of at most 97 characters, and Ray adds the node id (56)
    private = Path(tempfile.mkdtemp(prefix="si-", dir="/tmp"))
    http, grpc = _free_range(PORT_RANGE), _free_range(PORT_RANGE)
    env = {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(private / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(private / "admin.sock"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(private / "metrics.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(private),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(private / "server-state"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(http),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(http + PORT_RANGE),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(grpc),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(grpc + PORT_RANGE),
    }
    return env, private


def stop_haproxy(private: Path) -> int:
    """SIGTERM every HAProxy whose command line names `private`; how many there were."""
    stopped = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "haproxy" in cmdline and str(private) in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGTERM)
                stopped += 1
            except OSError:
                pass
    return stopped
