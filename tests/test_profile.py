"""The offline profiler on a real bundle: every (split, bits) measured, files written."""
import json

import pytest

from converter.pareto import pareto_front
from converter.profile import choose_variants
from tests.conftest import copy_bundle, run_module, write_image_folder


def test_pareto_front_is_the_lower_left_staircase():
    points = [(100, 5.0), (200, 1.0), (150, 6.0), (300, 1.0), (400, 0.0), (50, 9.0)]
    assert pareto_front(points) == [5, 0, 1, 4]


def test_choose_variants_prefers_calibrated_only_when_it_is_free():
    rows = [
        {"bits": 4, "variant": "frame", "bytes_mean": 500, "drop_pp": 0.2, "agreement": 0.99},
        {"bits": 4, "variant": "calibrated", "bytes_mean": 300, "drop_pp": 0.3, "agreement": 0.99},
        {"bits": 2, "variant": "frame", "bytes_mean": 300, "drop_pp": 0.5, "agreement": 0.98},
        {"bits": 2, "variant": "calibrated", "bytes_mean": 200, "drop_pp": 3.0, "agreement": 0.9},
    ]
    chosen = {r["bits"]: r["variant"] for r in choose_variants(rows)}
    assert chosen == {2: "frame", 4: "calibrated"}


def test_choose_variants_takes_clipped_ranges_when_they_save_accuracy():
    rows = [
        {"bits": 2, "variant": "frame", "bytes_mean": 300, "drop_pp": 4.0, "agreement": 0.8},
        {"bits": 2, "variant": "clipped", "bytes_mean": 400, "drop_pp": 0.5, "agreement": 0.95},
        {"bits": 2, "variant": "calibrated", "bytes_mean": 200, "drop_pp": 9.0, "agreement": 0.7},
        {"bits": 3, "variant": "frame", "bytes_mean": 500, "drop_pp": 0.3, "agreement": 0.97},
        {"bits": 3, "variant": "clipped", "bytes_mean": 560, "drop_pp": 0.2, "agreement": 0.97},
    ]
    chosen = {r["bits"]: r["variant"] for r in choose_variants(rows)}
    assert chosen == {2: "clipped", 3: "frame"}  # at 3 bits 0.1 pp is not worth 60 bytes


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("images"), 24)


@pytest.mark.slow
def test_profile_cli_on_tiny_bundle(tiny_bundle, image_folder, tmp_path):
    tiny_bundle = copy_bundle(tiny_bundle, tmp_path / "tiny")  # profiling writes into it
    result = run_module("converter.profile", str(tiny_bundle), "--data", str(image_folder),
                        "--no-progress", "--allocate", "all")
    assert result.returncode == 0, result.stderr
    profile = json.loads((tiny_bundle / "profile.json").read_text())
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    heads = [s["name"] for s in manifest["splits"] if s["head"]]
    assert profile["version"] == 3 and profile["model_sha256"] == manifest["model"]["sha256"]
    assert {(c["split"], c["bits"]) for c in profile["configs"]} == {
        (s, b) for s in heads for b in (1, 2, 3, 4, 5, 6, 8, 16, 32)}
    for c in profile["configs"]:
        assert c["bytes_mean"] > 0 and c["bytes_p95"] >= c["bytes_mean"] * 0.5
        if c["bits"] == 32:  # lossless: same answers as the float model
            assert c["agreement"] == 1.0 and c["drop_pp"] == 0.0
    by = {(c["split"], c["bits"]): c for c in profile["configs"]}
    for s in heads:
        assert by[(s, 2)]["bytes_mean"] < by[(s, 32)]["bytes_mean"]
    assert profile["jpeg"]["bytes_mean"] > 0 and profile["dataset"]["n"] == 18  # 6 calibrate
    assert set(profile["splits"]) == set(heads) | {"input"}
    assert profile["jpeg"]["encode_ms"] > 0 and profile["jpeg"]["decode_ms"] > 0
    calibration = json.loads((tiny_bundle / "calibration.json").read_text())
    assert set(calibration["splits"]) == set(heads)
    # bits=1: each split's per-channel allocation, with how its budget was chosen
    from splitinfer.bundle.calibration import load_calibration
    from splitinfer.bundle.manifest import load_manifest

    allocations = load_calibration(tiny_bundle, load_manifest(tiny_bundle), "allocated")
    assert set(allocations) == set(heads)
    for s in heads:
        chosen = calibration["splits"][s]["allocation"]
        assert chosen["tried"] and chosen["mean_bits"] == pytest.approx(allocations[s].mean_bits)
        assert 0 <= chosen["target_agreement"] <= 1 and len(chosen["tried"]) <= 5
        row = by[(s, 1)]
        assert row["variant"] == "allocated" and row["mean_bits"] == pytest.approx(allocations[s].mean_bits)
        # whatever budget won, fewer bits per value than 8-bit uniform spend fewer bytes
        assert row["bytes_mean"] < by[(s, 8)]["bytes_mean"]
    assert (tiny_bundle / "pareto.png").stat().st_size > 10_000


@pytest.mark.slow
def test_the_jpeg_row_is_measured_on_more_images_than_the_splits(tiny_bundle, image_folder, tmp_path):
    """JPEG costs one run of the model an image: it gets every evaluation image loaded (up to
    jpeg_limit), the splits the first --limit; the recorded evaluation set covers them all, so
    --verify replays on images neither saw."""
    tiny_bundle = copy_bundle(tiny_bundle, tmp_path / "tiny")
    result = run_module("converter.profile", str(tiny_bundle), "--data", str(image_folder),
                        "--no-progress", "--limit", "10", "--bits", "8,32")
    assert result.returncode == 0, result.stderr
    profile = json.loads((tiny_bundle / "profile.json").read_text())
    assert profile["dataset"]["n"] == 10 and len(profile["dataset"]["evaluation"]["sha256"]) == 18
    assert profile["jpeg"]["images"] == 18
    assert {c["images"] for c in profile["variants"]} == {10}


def test_profile_cli_errors(tmp_path, tiny_bundle):
    result = run_module("converter.profile", str(tmp_path / "nothing"))
    assert result.returncode == 2 and "No bundle" in result.stderr
    result = run_module("converter.profile", str(tiny_bundle), "--bits", "7")
    assert result.returncode == 2 and "Expected bit widths" in result.stderr
    result = run_module("converter.profile", str(tiny_bundle))  # no default data for this model
    assert result.returncode == 2 and "--data" in result.stderr


@pytest.mark.slow
def test_the_python_api_profiles_and_returns_the_typed_profile(tiny_bundle, tmp_path):
    import numpy as np

    import splitinfer as si

    bundle = copy_bundle(tiny_bundle, tmp_path / "tiny")
    rng = np.random.default_rng(7)
    images = rng.uniform(0, 255, (12, 32, 32, 3)).astype(np.float32)
    calibration = rng.uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    prof = si.profile(bundle, images, rng.integers(0, 10, 12), calibration=calibration, bits=(4, 32))
    assert isinstance(prof, si.Profile) and prof.images == 12
    assert {c.bits for c in prof.configs} == {4, 32} and all(c.variant for c in prof.configs)
    assert prof == si.bundle.profile.load_profile(bundle / "profile.json")  # what was written
    assert not (bundle / "pareto.png").exists()  # plotting only when asked


def test_a_variant_is_screened_out_only_when_clearly_over_the_screen():
    import numpy as np

    from converter.profile import Screen, _clearly_out

    labels = np.zeros(200, dtype=int)
    float_pred = labels.copy()  # the float model is right on every image
    screen = Screen(float_pred, labels, after=100, drop_pp=5.0)
    wrong_20 = [0] * 80 + [1] * 20  # 20 pp worse on 100 images: out
    wrong_4 = [0] * 96 + [1] * 4  # 4 pp: its lower bound is below 5 pp, so it stays
    assert _clearly_out(wrong_20, screen)
    assert not _clearly_out(wrong_4, screen)
    assert not _clearly_out([0] * 100, screen)
    unlabelled = Screen(float_pred, None, after=100, drop_pp=5.0)  # disagreement with the float model
    assert _clearly_out(wrong_20, unlabelled) and not _clearly_out(wrong_4, unlabelled)


def test_tail_batch_keeps_wide_activations_alone_and_batches_small_ones():
    from converter.classify import tail_batch

    assert tail_batch((112, 112, 96)) == 1  # over a million values: alone
    assert tail_batch((80, 80, 16)) == 10  # the default model's early split
    assert tail_batch((40, 40, 96)) == 6
    assert tail_batch((10, 10, 64)) == 16  # at most 16
    assert tail_batch((10,)) == 16


@pytest.mark.slow
def test_profile_decodes_every_payload_when_predicted_values_disagree(tiny_bundle, tmp_path, monkeypatch, capsys):
    """The profiler trusts `pack_with_values` only after checking it bit for bit on a sample."""
    import numpy as np

    import splitinfer as si
    from converter.profile import UNPACK_SAMPLE
    from splitinfer import codec

    rng = np.random.default_rng(3)
    images = rng.uniform(0, 255, (UNPACK_SAMPLE + 8, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 10, len(images))
    calibration = rng.uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)

    def answers(profile):
        return [(c.split, c.bits, c.variant, c.point_drop_pp, c.upper_drop_pp, c.bytes_mean) for c in profile.configs]

    trusted = si.profile(copy_bundle(tiny_bundle, tmp_path / "a"), images, labels,
                         calibration=calibration, bits=(2, 8))
    real = codec.pack_with_values

    def wrong_values(x, bits, **kwargs):
        payload, values = real(x, bits, **kwargs)
        return payload, lambda: values() + 1.0

    monkeypatch.setattr(codec, "pack_with_values", wrong_values)
    checked = si.profile(copy_bundle(tiny_bundle, tmp_path / "b"), images, labels,
                         calibration=calibration, bits=(2, 8))
    assert "decoding every payload" in capsys.readouterr().err
    assert answers(checked) == answers(trusted)


def test_a_lossless_earlier_configuration_dominates_only_when_better_on_every_count():
    import numpy as np

    from converter.profile import Lossless, Screen

    w = Lossless("early", 32, tail_flops=1000, bytes_mean=500_000.0, pack_ms=4.0)
    screen = Screen(np.zeros(10), None, lossless=(w,))
    assert screen.dominating(tail_flops=900, bytes_mean=1_200_000.0, pack_ms=9.0) is w
    assert screen.dominating(900, 400_000.0, 9.0) is None  # fewer bytes
    assert screen.dominating(900, 1_200_000.0, 3.0) is None  # packs faster
    assert screen.dominating(700, 1_200_000.0, 9.0) is None  # leaves the cloud much less work
    assert Screen(np.zeros(10), None).dominating(900, 1e9, 1e9) is None
    later = []  # splits that finish while this one is measured count too
    screen = Screen(np.zeros(10), None, lossless=lambda: later)
    assert screen.dominating(900, 1_200_000.0, 9.0) is None
    later.append(w)
    assert screen.dominating(900, 1_200_000.0, 9.0) is w
