"""Server configuration: one frozen dataclass, None meaning "infer it" (see `resolved`)."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from splitinfer.errors import SplitInferError
from splitinfer.protocol import TOKEN_ENV

LOAD_MODES = ("eager", "lazy")
BACKENDS = ("auto", "litert", "tf", "keras")  # keras: the old name of tf


class ConfigError(SplitInferError, ValueError):
    """A setting that cannot work; the message names the setting, the value and the fix."""


@dataclass(frozen=True)
class ServerConfig:
    """What one worker needs to serve; the CLI builds it, tests build it directly.

    `token=None` reads SPLITINFER_TOKEN (empty means no auth). `threads=None` is enough threads
    to fill two batches. `max_queue` bounds the requests waiting per (model, split) in one worker.
    """

    bundles: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    threads: int | None = None
    token: str | None = field(default=None, repr=False)  # never in logs or reprs
    max_batch: int = 32
    max_delay_ms: float = 5.0
    max_body_bytes: int = 16 << 20
    max_queue: int = 256
    early_dispatch: bool = True  # a batch starts once no decoded request is still coming
    load: str = "eager"
    backend: str = "auto"  # tail backend: auto (LiteRT on a CPU, TensorFlow on a GPU), litert, tf
    tail_threads: int | None = None  # threads a tail call may use (None: every core); one per Ray replica CPU
    request_timeout_s: float = 30.0
    read_timeout_s: float = 5.0  # longest silence while a request arrives; frees stalled threads
    body_deadline_s: float = 10.0  # the whole body within this, however slowly it trickles
    retry_after_s: int = 1
    default_k: int = 5
    fault_injection: bool = False  # POST /v1/_faults (cloud_runtime.faults); tests only
    certfile: str | None = None  # TLS: the server's certificate chain (PEM), with keyfile
    keyfile: str | None = None

    @property
    def tls(self) -> bool:
        return self.certfile is not None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def resolved(self) -> "ServerConfig":
        """A copy with every None filled in and every value checked (ConfigError otherwise)."""
        token = self.token if self.token is not None else os.environ.get(TOKEN_ENV, "")
        threads = self.threads if self.threads is not None else max(8, 2 * self.max_batch)
        cfg = dataclasses.replace(self, token=token or "", threads=threads,
                                  bundles=tuple(str(b) for b in self.bundles))
        cfg._check()
        return cfg

    @property
    def auth_enabled(self) -> bool:
        return bool(self.token)

    @property
    def max_delay_s(self) -> float:
        return self.max_delay_ms / 1000.0

    def _check(self) -> None:
        ints = {"port": (self.port, 0), "workers": (self.workers, 1), "threads": (self.threads, 1),
                "max_batch": (self.max_batch, 1), "max_body_bytes": (self.max_body_bytes, 1),
                "max_queue": (self.max_queue, 1), "retry_after_s": (self.retry_after_s, 0),
                "default_k": (self.default_k, 1)}
        for name, (value, low) in ints.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}. Received: {name}={value!r}")
        if self.tail_threads is not None and (isinstance(self.tail_threads, bool)
                                              or not isinstance(self.tail_threads, int) or self.tail_threads < 1):
            raise ConfigError(f"tail_threads must be an integer >= 1 or None. Received: {self.tail_threads!r}")
        if self.port > 65535:
            raise ConfigError(f"port must be in 0..65535. Received: port={self.port}")
        if not self.max_delay_ms >= 0:
            raise ConfigError(f"max_delay_ms must be >= 0. Received: max_delay_ms={self.max_delay_ms!r}")
        if not self.request_timeout_s > 0:
            raise ConfigError(f"request_timeout_s must be > 0. Received: {self.request_timeout_s!r}")
        if not self.read_timeout_s > 0:
            raise ConfigError(f"read_timeout_s must be > 0. Received: {self.read_timeout_s!r}")
        if not self.body_deadline_s > 0:
            raise ConfigError(f"body_deadline_s must be > 0. Received: {self.body_deadline_s!r}")
        if self.load not in LOAD_MODES:
            raise ConfigError(f"load must be one of {LOAD_MODES}. Received: load={self.load!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS}. Received: backend={self.backend!r}")
        if (self.certfile is None) != (self.keyfile is None):
            raise ConfigError("TLS needs both --certfile and --keyfile. Received: "
                              f"certfile={self.certfile!r}, keyfile={self.keyfile!r}")
        if self.tls:
            _check_tls_files(self.certfile, self.keyfile)
        if not self.bundles:
            raise ConfigError("No bundle to serve: pass --bundle DIR (a directory from python -m converter).")


def _check_tls_files(certfile: str, keyfile: str) -> None:
    """Load the pair once, so a wrong path or a key that does not match fails in one line
    before any worker starts."""
    import ssl

    for name, path in (("certfile", certfile), ("keyfile", keyfile)):
        if not os.path.isfile(path):
            raise ConfigError(f"{name} {path} is not a file; pass a PEM file")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError, ValueError) as e:
        raise ConfigError(f"cannot use certfile {certfile} with keyfile {keyfile}: {e}; pass the "
                          "server's PEM certificate chain and its matching private key") from None


def token_warning(config: ServerConfig) -> str | None:
    """What to tell an operator whose bearer token would cross a network in clear text."""
    if not config.auth_enabled or config.tls or _is_loopback(config.host):
        return None
    return (f"the bearer token would cross the network in clear text on {config.url}: serve with "
            "--certfile/--keyfile (tokens must only travel over TLS)")


def workers_hint(workers: int, cores: int) -> str | None:
    """What to tell an operator who serves a many-core machine with one gunicorn worker: on a CPU
    the tails and the Python HTTP path of one worker leave cores idle (2 cores: 1.62x the
    requests/s with 2 workers, `python -m benchmarks.scale_out`). A GPU server wants one worker
    per GPU instead, which the master cannot see without importing TensorFlow; hence a hint."""
    if workers != 1 or cores < 2:
        return None
    return (f"1 worker on {cores} cores: on a server without a GPU, --workers {cores} serves more "
            "requests/s (each worker loads every tail; see cloud_runtime/README.md)")


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
