"""The edge runtime with real interpreters and a real cloud server that dies and comes back."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from edge_runtime.heads import HeadPool, useful_heads
from edge_runtime.runner import EdgeConfig, EdgeRuntime, Frame
from splitinfer.bundle.manifest import load_manifest
from splitinfer.bundle.profile import load_profile
from tests.conftest import run_module
from splitinfer.testing import CloudProcess, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cloud(profiled_bundle, tmp_path_factory):
    server = CloudProcess(profiled_bundle[0], tmp_path_factory.mktemp("cloud") / "cloud.log")
    server.start()
    yield server
    server.kill()


def frames(n: int, seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    return [Frame(i, rng.uniform(0, 255, (32, 32, 3)).astype(np.float32), i % 10) for i in range(n)]


def test_head_pool_keeps_every_head_ready(profiled_bundle):
    bundle, _ = profiled_bundle
    manifest = load_manifest(bundle)
    with HeadPool(bundle, manifest, num_threads=1) as pool:
        assert set(pool.loaded) == {s.name for s in manifest.splits if s.head}
        x = frames(1)[0].image
        for s in manifest.splits[1:]:
            assert pool.run(s.name, x).shape == s.shape
        assert pool.run("full", x).shape == manifest.model.output_shape
        assert pool.info.package == "ai_edge_litert" and pool.info.num_threads == 1


def test_max_heads_keeps_the_most_useful(profiled_bundle):
    bundle, _ = profiled_bundle
    manifest = load_manifest(bundle)
    order = useful_heads(manifest, load_profile(bundle / "profile.json"))
    assert sorted(order) == sorted(s.name for s in manifest.splits if s.head)
    with HeadPool(bundle, manifest, max_heads=2, priority=order) as pool:
        assert pool.loaded == [n for n in manifest.split_names if n in order[:2]]
        assert len(pool.dropped) == len(order) - 2


def test_device_policy_answers_every_frame_locally(profiled_bundle):
    bundle, _ = profiled_bundle
    with EdgeRuntime(bundle, None, EdgeConfig(policy="device")) as rt:
        results = rt.run(frames(20))
    assert [r.frame for r in results] == list(range(20))
    assert all(r.where == "device" and not r.fallback for r in results)


def test_device_policy_ignores_a_dead_cloud_url(profiled_bundle):
    """Device-only never probes, so a cloud that is down is not a fallback."""
    bundle, _ = profiled_bundle
    with EdgeRuntime(bundle, "http://127.0.0.1:9", EdgeConfig(policy="device", camera_fps=50)) as rt:
        results = rt.run(frames(60))
        assert rt.client is None and not rt.events
    assert all(r.where == "device" and not r.fallback and "fallback" not in r.reason for r in results)


def test_fixed_split_goes_through_the_cloud_and_agrees_with_the_device(profiled_bundle, cloud):
    bundle, _ = profiled_bundle
    fs = frames(30, seed=2)
    with EdgeRuntime(bundle, None, EdgeConfig(policy="device")) as rt:
        local = [r.top1 for r in rt.run(fs)]
    with EdgeRuntime(bundle, cloud.url, EdgeConfig(policy="fixed", split="res_add", bits=32)) as rt:
        remote = rt.run(fs)
    assert all(r.where == "split" and r.split == "res_add" and r.bytes > 0 for r in remote)
    assert np.mean([a == b.top1 for a, b in zip(local, remote)]) >= 0.95
    assert all("tail_ms" in r.server for r in remote)
    # the server's load reached the scheduler with every answer (FORMATS "load")
    assert rt.scheduler.inner.cloud_load.n >= len(remote)


def test_cloud_killed_and_restarted_mid_stream_loses_no_frame(profiled_bundle, cloud):
    bundle, _ = profiled_bundle
    n = 1200
    config = EdgeConfig(policy="fixed", split="res_add", bits=8, camera_fps=40, slo_ms=500)
    results: list = []
    answered, streaming = [0], threading.Event()

    def on_result(_):
        answered[0] += 1
        if answered[0] >= 80:
            streaming.set()

    with EdgeRuntime(bundle, cloud.url, config) as rt:
        worker = threading.Thread(target=lambda: results.extend(rt.run(frames(n, seed=3), on_result)))
        worker.start()
        assert streaming.wait(60)  # 80 frames answered: the stream is under way
        cloud.kill()
        # the edge has seen the cloud fail (a frame finished on the device) before it returns
        assert wait_until(lambda: any(e["event"] == "cloud_error" for e in list(rt.events)), 60)
        cloud.start()
        worker.join(timeout=120)
        assert not worker.is_alive()
    assert [r.frame for r in results] == list(range(n))  # each frame once, none lost
    fallbacks = [r for r in results if r.fallback]
    assert fallbacks, "the dead cloud must have caused fallbacks"
    last_fallback = max(r.frame for r in fallbacks)
    after = [r for r in results if r.frame > last_fallback]
    timeline = [(r.frame, r.where, r.fallback) for r in results[::50]]
    assert after and all(r.where == "split" for r in after), f"onloading must resume: {timeline}"
    assert all(r.where == "split" for r in results if r.frame < min(r.frame for r in fallbacks))


def test_cli_jsonl_and_errors(profiled_bundle, cloud, tmp_path):
    bundle, images = profiled_bundle
    out = tmp_path / "run.jsonl"
    r = run_module("edge_runtime", "--bundle", str(bundle), "--cloud", cloud.url, "--policy", "fixed",
                   "--split", "pw", "--bits", "4", "--images", str(images), "--jsonl", str(out))
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 17 and lines[-1]["summary"] and lines[-1]["frames"] == 16
    for key in ("frame", "split", "bits", "bytes", "latency_ms", "top1", "where", "fallback"):
        assert key in lines[0]
    assert {x["frame"] for x in lines[:-1]} == set(range(16))
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    from PIL import Image

    Image.new("RGB", (40, 30)).save(wrong / "a.png")
    cases = [
        (["--bundle", str(tmp_path / "none"), "--images", str(images)], "No bundle"),
        (["--bundle", str(bundle), "--cloud", cloud.url, "--policy", "fixed", "--images", str(images)], "--split"),
        (["--bundle", str(bundle), "--cloud", cloud.url, "--images", str(wrong)], "32x32"),
        (["--bundle", str(bundle), "--images", str(images)], "--cloud"),
        (["--bundle", str(bundle), "--cloud", cloud.url, "--policy", "fixed", "--split", "nope",
          "--bits", "4", "--images", str(images)], "Unknown split"),
    ]
    for args, message in cases:
        r = run_module("edge_runtime", *args)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr


def test_an_emulated_board_packs_in_the_profiles_board_time_not_this_hosts_times_a_factor(profiled_bundle):
    """Packing is padded to the table's board time for the configuration (the profile's pack
    time on this machine x the class's single-thread factor), as heads are: multiplying this
    run's own time would multiply whatever slowed this host by the factor."""
    bundle, _ = profiled_bundle
    config = EdgeConfig(policy="fixed", split="res_add", bits=8, device_class="pi-zero2")
    rt = EdgeRuntime(bundle, "http://127.0.0.1:9", config)
    try:
        table = rt.scheduler.table
        i = next(k for k, c in enumerate(table.configs) if c.split == "res_add" and c.bits == 8)
        board = table.configs[i].pack_ms
        assert rt.serial_factor > 1 and board > 0
        quick = board / rt.serial_factor / 4  # a run 4x faster here than the profile measured
        assert rt._pad_packing(quick, i) == pytest.approx(board)  # not quick x factor
        slow = board * 2  # slower than the board itself: kept as measured
        assert rt._pad_packing(slow, i) == slow
    finally:
        rt.close()
