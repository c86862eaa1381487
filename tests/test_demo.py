"""End to end, as `make demo` runs it, on the tiny model: convert, profile, cloud, edge, scheduler."""
import hashlib
import json

import pytest

from tests.conftest import run_module, write_image_folder

pytestmark = pytest.mark.slow


def test_demo_end_to_end(tiny_model_path, tmp_path):
    images = write_image_folder(tmp_path / "images", 20, seed=7)
    bundle, out = tmp_path / "bundle", tmp_path / "report"
    r = run_module("demo", "--bundle", str(bundle), "--source", str(tiny_model_path), "--images",
                   str(images), "--duration", "4", "--out", str(out), "--max-splits", "4",
                   "--devices", "pi-zero2,pi3", timeout=600)  # both far slower than any host
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in ("manifest.json", "profile.json", "calibration.json", "device-this-machine.json"):
        assert (bundle / name).is_file(), name
    # the bundle remembers its source, so a changed model file gets a new bundle next time
    from demo.__main__ import SOURCE_STAMP, source_fingerprint

    assert (bundle / SOURCE_STAMP).read_text().strip() == source_fingerprint(str(tiny_model_path))
    assert source_fingerprint(str(tiny_model_path)).endswith(
        hashlib.sha256(tiny_model_path.read_bytes()).hexdigest())
    report = json.loads((out / "summary.json").read_text())
    assert [run["device_class"] for run in report["runs"]] == ["pi-zero2", "pi3"]
    for run in report["runs"]:
        assert set(run["policies"]) == {"dyno", "device", "cloud"}
        for row in run["policies"].values():
            live = row["live"]
            assert live["frames"] > 0 and live["throughput_fps"] > 0
            assert row["simulated"]["throughput_fps"] > 0
        assert run["policies"]["cloud"]["live"]["where"]["cloud"] > 0
        assert run["dyno_over_device_throughput"] > 0 and run["best_fixed"] in ("device", "cloud")
        assert (out / f"timeline-{run['device_class']}.png").stat().st_size > 10_000
    assert report["link"] and " then " in report["trace"]
    assert (out / "timeline.png").stat().st_size > 10_000
    assert (out / "pareto.png").stat().st_size > 10_000
    assert "t=" in r.stdout  # the live line per second
