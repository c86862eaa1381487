"""The edge's HTTP client: one keep-alive session, bounded timeouts, no hidden retries.

A failed upload is never retried here: the runtime finishes that frame on the device instead and
the scheduler decides when to try the cloud again, so a dead server costs one timeout, not a
retry storm. Every answer carries the server's own timings, so the network share of the elapsed
time (what the bandwidth estimator needs) is the elapsed time minus the server's.
"""
from __future__ import annotations

import ssl
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from splitinfer import protocol as P
from splitinfer.errors import CloudError


@dataclass(frozen=True)
class CloudAnswer:
    top1: int
    top_k: list[dict[str, Any]]
    label: str | None
    split: str
    elapsed_s: float  # request sent to answer parsed, on the edge's clock
    server: dict[str, float] = field(default_factory=dict)  # decode/queue/tail/total ms, batch
    load: dict[str, float] = field(default_factory=dict)    # the worker's load (FORMATS "load")

    @property
    def network_s(self) -> float:
        """Elapsed time not spent computing in the server: upload, RTT, download.

        The server's clock starts when the request's headers arrive, so the time it spent
        receiving the body (`receive_ms`) is upload time and stays in."""
        busy = self.server.get(P.TOTAL_MS, 0.0) - self.server.get(P.RECEIVE_MS, 0.0)
        return max(self.elapsed_s - busy / 1e3, 1e-6)


def system_trust_store() -> str | bool:
    """The operating system's CA bundle (what a board's admin manages), else requests' own."""
    cafile = ssl.get_default_verify_paths().cafile
    return cafile if cafile and Path(cafile).is_file() else True


def tls_error(url: str, e: Exception) -> CloudError:
    """One line that says what failed and the fix, from urllib3's nested SSL error."""
    reason = e
    while reason.__cause__ is not None or reason.__context__ is not None:
        reason = reason.__cause__ or reason.__context__
    text = str(reason) if isinstance(reason, ssl.SSLError) else str(e)
    for marker in ("certificate verify failed: ", "SSL: "):
        if marker in text:
            text = text.split(marker, 1)[1]
    text = text.split(" (_ssl.c")[0].strip(" ')\"]")
    return CloudError("tls", f"TLS with {url} failed: {text}; if the cloud uses a private CA, "
                             "pass --ca-cert FILE (plain http is never tried instead)")


class CloudClient:
    """Talks to one cloud_runtime service."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        model: str | None = None,
        model_sha256: str | None = None,
        before_send: Callable[[int, float], None] | None = None,
        ca_cert: str | None = None,
    ) -> None:
        """`before_send(nbytes, timeout_s)` runs before each upload: an emulated link's hook. It
        may sleep (its time counts against the request's timeout) or raise CloudError.

        An https:// cloud is verified against `ca_cert` (a PEM file: a private CA) or else the
        system's trust store. A URL is used as given: never downgraded to plain http.
        """
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"Expected an http(s):// URL for the cloud. Received: {base_url!r}")
        if ca_cert is not None and not base_url.startswith("https://"):
            raise ValueError(f"--ca-cert verifies an https:// cloud; {base_url} is plain http, "
                             "where it would protect nothing. Use the https:// URL.")
        if ca_cert is not None and not Path(ca_cert).is_file():
            raise ValueError(f"--ca-cert {ca_cert} is not a file; pass the PEM file of the CA "
                             "that signed the cloud's certificate")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.before_send = before_send
        self._session = requests.Session()
        # Passed with each request: requests lets $REQUESTS_CA_BUNDLE override a session's verify.
        self._verify = ca_cert or system_trust_store()
        adapter = HTTPAdapter(max_retries=0, pool_connections=4, pool_maxsize=16)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._headers = {}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
            host = urlsplit(base_url).hostname or ""
            if base_url.startswith("http://") and host not in ("localhost", "::1") \
                    and not host.startswith("127."):
                warnings.warn(f"the bearer token would cross the network in clear text to "
                              f"{base_url}: use https:// (tokens must only travel over TLS)",
                              stacklevel=2)
        if model_sha256:
            self._headers[P.MODEL_SHA256_HEADER] = model_sha256

    def infer(self, payload: bytes, timeout_s: float) -> CloudAnswer:
        """POST a packed activation; the codec's header names model, split and bits."""
        return self._post(P.INFER, payload, P.PACKED_CONTENT_TYPE, timeout_s)

    def infer_image(self, image: bytes, timeout_s: float, content_type: str = "image/jpeg") -> CloudAnswer:
        """POST a whole frame (cloud-only)."""
        params = f"?model={self.model}" if self.model else ""
        return self._post(f"{P.INFER_IMAGE}{params}", image, content_type, timeout_s)

    def probe(self, body: bytes, timeout_s: float) -> CloudAnswer:
        """Upload bytes that the server discards: a bandwidth sample without tail compute."""
        return self._post(P.PROBE, body, P.PROBE_CONTENT_TYPE, timeout_s, parse=False)

    def ping(self, timeout_s: float = 1.0) -> float:
        """Round-trip time of the cheapest request, in ms (raises CloudError)."""
        t0 = time.perf_counter()
        timeout_s = self._emulated_link(0, timeout_s, t0)
        try:
            r = self._session.get(f"{self.base_url}{P.HEALTH}", timeout=timeout_s, verify=self._verify,
                                  allow_redirects=False)
        except requests.exceptions.SSLError as e:
            raise tls_error(self.base_url, e) from e
        except requests.Timeout as e:
            raise CloudError("timeout", f"no answer to /healthz within {timeout_s:.2f} s") from e
        except requests.RequestException as e:
            raise CloudError("unreachable", f"cloud unreachable: {type(e).__name__}") from e
        if r.status_code != 200:
            raise CloudError("server", f"{P.HEALTH} answered {r.status_code}", r.status_code)
        return (time.perf_counter() - t0) * 1e3

    def close(self) -> None:
        self._session.close()

    def _emulated_link(self, nbytes: int, timeout_s: float, t0: float) -> float:
        """Run the link hook; what it leaves of `timeout_s` is the request's timeout."""
        if self.before_send is None:
            return timeout_s
        self.before_send(nbytes, timeout_s)
        left = timeout_s - (time.perf_counter() - t0)
        if left <= 0:
            raise CloudError("timeout", f"the link took the whole {timeout_s:.2f} s")
        return left

    def __enter__(self) -> "CloudClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _post(self, path: str, body: bytes, content_type: str, timeout_s: float,
              parse: bool = True) -> CloudAnswer:
        headers = {**self._headers, "Content-Type": content_type}
        t0 = time.perf_counter()
        timeout_s = self._emulated_link(len(body), timeout_s, t0)
        try:
            # (connect, read) timeouts: both bounded by what the latency SLO allows.
            r = self._session.post(f"{self.base_url}{path}", data=body, headers=headers,
                                   timeout=(min(timeout_s, 3.0), timeout_s), verify=self._verify,
                                   allow_redirects=False)  # never resent elsewhere, or in clear
        except requests.exceptions.SSLError as e:
            raise tls_error(self.base_url, e) from e
        except requests.Timeout as e:
            raise CloudError("timeout", f"no answer within {timeout_s:.2f} s") from e
        except requests.RequestException as e:
            raise CloudError("unreachable", f"cloud unreachable: {type(e).__name__}") from e
        elapsed = time.perf_counter() - t0
        try:
            data = r.json()
        except ValueError:
            data = {}
        if r.status_code >= 500:
            raise CloudError("server", f"cloud answered {r.status_code}: {data.get('error', r.reason)}",
                             r.status_code)
        if r.status_code != 200:
            raise CloudError("rejected", f"cloud refused the request ({r.status_code}): "
                             f"{data.get('error', r.reason)}", r.status_code)
        if not parse:
            server = ({k: float(data.get(k, 0.0)) for k in (P.RECEIVE_MS, P.TOTAL_MS)}
                      if isinstance(data, dict) else {})
            return CloudAnswer(top1=-1, top_k=[], label=None, split="", elapsed_s=elapsed, server=server)
        try:
            top_k = data[P.TOP_K]
            return CloudAnswer(
                top1=int(top_k[0]["class"]),
                top_k=top_k,
                label=data.get("label"),
                split=str(data.get("split", "")),
                elapsed_s=elapsed,
                server={k: float(data[k]) for k in P.TIMING_FIELDS if k in data},
                load=({k: float(v) for k, v in data[P.LOAD].items()
                       if isinstance(v, (int, float))} if isinstance(data.get(P.LOAD), dict) else {}),
            )
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise CloudError("server", f"malformed answer from the cloud: {e}") from e
