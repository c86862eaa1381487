"""What tests and benchmarks share: a real cloud server process, throwaway TLS certificates
and a tiny model with every kind of cut.

Loopback only (or a network namespace the caller created, via `CloudProcess(wrap=...)`). No
TensorFlow at import: `build_tiny_model` imports it when called.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import requests

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CloudProcess:
    """A real `python -m cloud_runtime` on a loopback port, restartable on the same port.

    `args` are extra CLI flags; `token` is passed through $SPLITINFER_TOKEN (never the command
    line) and sent on the readiness poll; `wrap` turns the command into one that runs elsewhere
    (demo.link.NetnsLink.wrap), with `host` the address the server binds there.
    """

    def __init__(self, bundle: Path, log: Path, args: Sequence[str] = (), *, token: str | None = None,
                 host: str = "127.0.0.1", wrap: Callable[[list[str]], list[str]] | None = None,
                 tls: "Certificates | None" = None):
        self.bundle, self.log, self.port = bundle, log, free_port()
        self.args, self.token, self.host, self.wrap = list(args), token, host, wrap
        self.tls = tls
        if tls is not None:
            self.args += ["--certfile", str(tls.cert), "--keyfile", str(tls.key)]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def verify(self) -> str | bool:
        """What a client passes as requests' `verify` to trust this server."""
        return str(self.tls.ca) if self.tls else True

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def start(self, timeout: float = 90) -> float:
        """Start and wait for /readyz; returns the seconds it took (killed if not ready)."""
        t0 = time.monotonic()
        self.launch()
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/readyz", headers=self.headers, timeout=1,
                                verify=self.verify).status_code == 200:
                    return time.monotonic() - t0
            except requests.RequestException:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"cloud exited: {self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
        self.kill()
        raise RuntimeError("cloud not ready in time")

    def launch(self) -> None:
        """Start the process and return at once (`start` also waits until it is ready)."""
        argv = [sys.executable, "-m", "cloud_runtime", "--bundle", str(self.bundle), "--host", self.host,
                "--port", str(self.port), "--workers", "1", *self.args]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        env.pop("SPLITINFER_TOKEN", None)
        if self.token:
            env["SPLITINFER_TOKEN"] = self.token
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.wrap(argv) if self.wrap else argv, cwd=REPO, stdout=log,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (a graceful stop: to the group for gunicorn, to the server alone for Ray),
        SIGKILL after `timeout`; the exit code."""
        if self.proc and self.proc.poll() is None:
            if "ray" in self.args:  # Ray's own processes must not get the signal first
                self.proc.send_signal(signal.SIGTERM)
            else:
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode if self.proc else None

    def worker_pid(self) -> int:
        """The gunicorn worker's pid (the process that serves, and whose memory matters)."""
        return int(requests.get(f"{self.url}/healthz", timeout=5, verify=self.verify).json()["pid"])

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass(frozen=True)
class Certificates:
    """A throwaway CA, a server certificate it signed for 127.0.0.1/localhost, and its key."""

    ca: Path
    cert: Path
    key: Path


def make_certificates(folder: Path, name: str = "test") -> Certificates:
    """Made with the openssl command (Debian's `openssl`, installed by make setup)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (folder / f"{name}-{x}" for x in
                                  ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ext = folder / f"{name}-san.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
            "-days", "2", "-subj", f"/CN=splitinfer {name} CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
            "-subj", "/CN=127.0.0.1")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
            "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return Certificates(ca, cert, key)


def build_tiny_model(input_shape=(32, 32, 3), classes=10, seed=0):
    """Conv stem, a residual block, a depthwise block, a head: every kind of cut in 1 s."""

    from splitinfer.quiet import import_tensorflow

    import_tensorflow()
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    x = inp = keras.Input(input_shape, name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1, name="rescale")(x)
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    y = layers.Conv2D(8, 3, padding="same", name="res_conv")(x)
    y = layers.ReLU(name="res_relu")(y)
    x = layers.Add(name="res_add")([x, y])
    x = layers.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(x)
    x = layers.Conv2D(16, 1, activation="relu", name="pw")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    out = layers.Dense(classes, activation="softmax", name="probs")(x)
    return keras.Model(inp, out, name="tiny")


def wait_until(condition: Callable[[], object], seconds: float = 10.0, every: float = 0.01) -> bool:
    """Poll `condition` until it is true or `seconds` pass; returns its last truth value.

    Tests wait on a state they can observe, never on a guessed delay: on a busy machine a
    sleep that is long enough here is too short there."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return bool(condition())
