"""TLS between board and cloud: a throwaway CA and server certificate made at test time, the
real server under gunicorn's TLS, and the real edge CLI. A wrong CA or plain http never costs a
frame, and the edge never falls back to plain http."""
from __future__ import annotations

import json
import socket

import pytest
import requests

from cloud_runtime.config import ConfigError, ServerConfig, token_warning
from tests.conftest import run_module, write_image_folder
from splitinfer.testing import CloudProcess, make_certificates

TOKEN = "tls-token-" + "5" * 12
FRAMES = 12


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    return make_certificates(folder, "good"), make_certificates(folder, "other")


@pytest.fixture(scope="module")
def cloud(profiled_bundle, certs, tmp_path_factory):
    server = CloudProcess(profiled_bundle[0], tmp_path_factory.mktemp("tls-cloud") / "cloud.log",
                          token=TOKEN, tls=certs[0])
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("tls-images"), FRAMES, seed=3)


def _edge(bundle, images, tmp_path, url: str, *extra: str):
    out = tmp_path / "frames.jsonl"
    r = run_module("edge_runtime", "--bundle", str(bundle), "--cloud", url, "--images", str(images),
                   "--policy", "fixed", "--split", "pw", "--bits", "8", "--jsonl", str(out), *extra,
                   env={"SPLITINFER_TOKEN": TOKEN})
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    return lines[:-1], lines[-1], r.stderr


@pytest.mark.slow
def test_split_frames_flow_over_https(cloud, certs, images, tmp_path):
    frames, summary, _ = _edge(cloud.bundle, images, tmp_path, cloud.url, "--ca-cert", str(certs[0].ca))
    assert cloud.url.startswith("https://")
    assert sorted(f["frame"] for f in frames) == list(range(FRAMES))
    assert all(f["where"] == "split" and not f["fallback"] for f in frames), frames[:3]
    assert summary["cloud_errors"] == 0


@pytest.mark.slow
def test_a_wrong_ca_is_refused_and_every_frame_is_answered_on_the_device(
        cloud, certs, images, tmp_path):
    frames, summary, stderr = _edge(cloud.bundle, images, tmp_path, cloud.url, "--ca-cert", str(certs[1].ca))
    assert sorted(f["frame"] for f in frames) == list(range(FRAMES))  # none lost, none twice
    assert all(f["where"] == "device" and f["fallback"] for f in frames), frames[:3]
    tls_lines = [line for line in stderr.splitlines() if "TLS with" in line]
    assert len(tls_lines) == 1 and "certificate verify failed" not in tls_lines[0], stderr
    assert "--ca-cert" in tls_lines[0] and "Traceback" not in stderr
    assert "plain http" in tls_lines[0]


@pytest.mark.slow
def test_the_system_trust_store_does_not_trust_a_private_ca(cloud, images, tmp_path):
    frames, _, stderr = _edge(cloud.bundle, images, tmp_path, cloud.url)
    assert len(frames) == FRAMES and all(f["where"] == "device" for f in frames)
    assert "TLS with" in stderr


@pytest.mark.slow
def test_plain_http_to_the_tls_port_fails_and_the_edge_never_downgrades(
        cloud, images, tmp_path):
    plain = cloud.url.replace("https://", "http://")
    with pytest.raises(requests.RequestException):
        requests.get(plain + "/healthz", timeout=10)
    frames, _, _ = _edge(cloud.bundle, images, tmp_path, plain)
    assert len(frames) == FRAMES and all(f["where"] == "device" for f in frames)
    # and the TLS server is unharmed, with the token accepted over https only
    r = requests.get(cloud.url + "/v1/models", headers=cloud.headers, verify=cloud.verify, timeout=10)
    assert r.status_code == 200
    assert "Traceback" not in cloud.log_text()


@pytest.mark.slow
def test_a_stalled_upload_over_tls_gets_its_408_encrypted(cloud, certs):
    """The body deadline shuts the TCP read side only: the answer still goes out over TLS."""
    import ssl

    ctx = ssl.create_default_context(cafile=str(certs[0].ca))
    with socket.create_connection(("127.0.0.1", cloud.port)) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                      + b"\r\nContent-Length: 5000\r\n\r\nabc")
            s.settimeout(60)
            answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


def test_tls_settings_are_checked_before_serving(certs, tmp_path):
    good, other = certs
    with pytest.raises(ConfigError, match="both --certfile and --keyfile"):
        ServerConfig(bundles=("b",), certfile=str(good.cert)).resolved()
    with pytest.raises(ConfigError, match="not a file"):
        ServerConfig(bundles=("b",), certfile=str(tmp_path / "none.pem"), keyfile=str(good.key)).resolved()
    with pytest.raises(ConfigError, match="cannot use certfile"):
        ServerConfig(bundles=("b",), certfile=str(good.cert), keyfile=str(other.key)).resolved()
    assert ServerConfig(bundles=("b",), certfile=str(good.cert), keyfile=str(good.key)).resolved().url.startswith("https://")


def test_a_token_without_tls_off_loopback_gets_a_warning():
    def warning(**kw):
        return token_warning(ServerConfig(bundles=("b",), **kw).resolved())

    assert warning(token="t", host="0.0.0.0") is not None
    assert warning(token="t", host="10.1.2.3") is not None
    assert warning(token="t", host="127.0.0.1") is None
    assert warning(token="t", host="localhost") is None
    assert warning(token="", host="0.0.0.0") is None
