"""Confidence bounds on accuracy drops, disjoint profiling sets, and --verify's verdicts."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from converter.confidence import (
    disagreement_drop,
    drop_interval,
    paired_counts,
    paired_drop,
    wilson_bounds,
    z_score,
)
from converter.datasets import array_dataset, load_dataset, overlap
from converter.verify import judge, split_fronts
from splitinfer.bundle.manifest import load_manifest
from splitinfer.bundle.profile import load_profile, parse_profile, row_drop
from splitinfer.errors import FormatError
from tests.conftest import copy_bundle, run_module, write_image_folder


def test_wilson_bounds_on_hand_computed_cases():
    z = z_score(0.95)
    assert z == pytest.approx(1.644854, abs=1e-6)
    lo, hi = wilson_bounds(0, 100)  # no success: the upper bound is z^2 / (n + z^2)
    assert lo == 0.0 and hi == pytest.approx(z * z / (100 + z * z))
    lo, hi = wilson_bounds(50, 100)  # symmetric around 1/2
    assert lo == pytest.approx(1 - hi)
    half = z * np.sqrt(0.25 / 100 + z * z / 40000) / (1 + z * z / 100)
    assert hi == pytest.approx(0.5 + half)


def test_paired_drop_on_constructed_cases():
    # 20 images only the float model gets right, 13 only the config: 0.7 pp on 1,000 images.
    d = paired_drop(860, 20, 13, 107)
    assert d.point_pp == pytest.approx(0.7)
    assert d.lower_pp < 0 < 0.7 < d.upper_pp < 2.0
    # The same rates on 4x the images give a bound about half as far from the point.
    d4 = paired_drop(4 * 860, 80, 52, 4 * 107)
    assert (d4.upper_pp - 0.7) == pytest.approx((d.upper_pp - 0.7) / 2, rel=0.15)
    # No disagreement at all: the drop is 0 and the bound small but positive.
    d0 = paired_drop(880, 0, 0, 120)
    assert d0.point_pp == 0 and 0 < d0.upper_pp < 0.5
    # A config that is always wrong where the float model is right: bound at the top.
    assert paired_drop(0, 100, 0, 0).upper_pp == pytest.approx(100)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 300), st.integers(0, 40), st.integers(0, 40), st.integers(0, 300))
def test_paired_bounds_bracket_the_point(a, b, c, d):
    if a + b + c + d == 0:
        return
    i = paired_drop(a, b, c, d)
    assert -100 - 1e-9 <= i.lower_pp <= i.point_pp + 1e-9
    assert i.point_pp <= i.upper_pp + 1e-9 <= 100 + 2e-9


def test_paired_bound_covers_the_true_drop_at_its_level():
    """Simulated evaluations with a known drop of 0.7 pp: the 95 % upper bound is above it in
    about 95 % of them (not far fewer: the bound is honest; not all: it is not vacuous)."""
    rng = np.random.default_rng(0)
    covered = 0
    trials = 1500
    for _ in range(trials):
        u = rng.random(1000)
        only_float, only_config = u < 0.020, (u >= 0.020) & (u < 0.033)
        both = (u >= 0.033) & (u < 0.90)
        i = paired_drop(int(both.sum()), int(only_float.sum()), int(only_config.sum()),
                        int((u >= 0.90).sum()))
        covered += i.upper_pp >= 0.7
    assert 0.92 <= covered / trials <= 0.98


def test_drop_interval_pairs_answers_or_counts_disagreement():
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    float_pred = labels.copy()
    pred = labels.copy()
    pred[:2] = 9 - labels[:2]
    assert paired_counts(float_pred == labels, pred == labels) == (8, 2, 0, 0)
    assert drop_interval(float_pred, pred, labels).point_pp == pytest.approx(20)
    unlabelled = drop_interval(float_pred, pred, None)
    assert unlabelled.point_pp == pytest.approx(20) and unlabelled == disagreement_drop(2, 10)


def test_row_drop_and_the_typed_profile_choose_the_estimate():
    row = {"drop_pp": 0.3, "drop_upper_pp": 1.2}
    assert row_drop(row) == 1.2 and row_drop(row, "point") == 0.3
    assert row_drop({"drop_pp": 0.3}) == 0.3  # version 1/2 rows: only the point
    doc = {"version": 3, "confidence": {"level": 0.95}, "jpeg": {"bytes_mean": 100, "drop_pp": 0.1,
                                                                 "drop_upper_pp": 0.4},
           "configs": [{"split": "s", "bits": 4, "bytes_mean": 10, **row}]}
    upper, point = parse_profile(doc), parse_profile(doc, drop_estimate="point")
    assert upper.configs[0].drop_pp == 1.2 and point.configs[0].drop_pp == 0.3
    assert upper.jpeg.drop_pp == 0.4 and upper.confidence == 0.95
    assert upper.configs[0].point_drop_pp == 0.3 and upper.configs[0].upper_drop_pp == 1.2
    old = {**doc, "version": 2}
    del old["confidence"]
    with pytest.raises(FormatError, match="no confidence bounds.*--drop-estimate point"):
        parse_profile(old)
    assert parse_profile(old, drop_estimate="point").configs[0].drop_pp == 0.3
    with pytest.raises(ValueError, match="drop estimate"):
        parse_profile(doc, drop_estimate="mean")


def test_folder_sets_are_disjoint_even_for_copies(tiny_bundle, tmp_path):
    folder = write_image_folder(tmp_path / "images", 16, seed=3)
    (folder / "99.png").write_bytes((folder / "00.png").read_bytes())  # a calibration image, renamed
    with open(folder / "labels.csv", "a") as f:
        f.write("99.png,0\n")
    data = load_dataset(load_manifest(tiny_bundle), folder)
    d = data.description
    assert len(data.calibration) == 4 and data.images.shape[0] == 12 == d["n"]  # 17 - 4 - 1 copy
    assert overlap(d) == 0 and not set(d["evaluation"]["sha256"]) & set(d["calibration"]["sha256"])
    forged = {**d, "evaluation": {"sha256": d["evaluation"]["sha256"] + d["calibration"]["sha256"][:1]}}
    assert overlap(forged) == 1


def test_scene_ranges_overlap_only_within_one_split():
    scenes = {"evaluation": {"scenes": "test", "first": 0, "count": 1000},
              "calibration": {"scenes": "val", "first": 0, "count": 128}}
    assert overlap(scenes) == 0
    assert overlap({**scenes, "calibration": {"scenes": "test", "first": 990, "count": 20}}) == 10


def test_array_dataset_never_evaluates_a_calibration_image():
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (20, 8, 8, 3)).astype(np.float32)
    d = array_dataset(images, np.arange(20))
    assert len(d.calibration) == 5 and len(d.images) == 15 and list(d.labels) == list(range(5, 20))
    d = array_dataset(images, np.arange(20), calibration=images[:3])  # given, overlapping
    assert len(d.images) == 17 and overlap(d.description) == 0


def test_verdicts_and_the_front_a_verification_replays():
    assert judge(1.0, 0.8, -0.5) == "ok"
    assert judge(0.3, 0.5, -0.1) == "above"  # within the replay's noise
    assert judge(0.3, 2.5, 0.9) == "FAIL"
    rows = [{"split": "a", "bits": b, "bytes_mean": n, "drop_upper_pp": u}
            for b, n, u in ((2, 100, 3.0), (3, 150, 3.5), (4, 200, 1.0), (8, 400, 0.2))]
    assert [r["bits"] for r in split_fronts(rows)] == [2, 4, 8]  # 3 bits: more bytes, worse bound


@pytest.mark.slow
def test_profile_records_disjoint_sets_and_verify_exits_on_a_broken_claim(profiled_bundle, tmp_path):
    bundle, folder = profiled_bundle
    bundle = copy_bundle(bundle, tmp_path / "tiny")
    profile = json.loads((bundle / "profile.json").read_text())
    assert profile["version"] == 3 and profile["confidence"]["level"] == 0.95
    assert overlap(profile["dataset"]) == 0 and profile["dataset"]["n"] == 12
    for c in profile["configs"]:
        assert c["drop_lower_pp"] <= c["drop_pp"] <= c["drop_upper_pp"]
    assert load_profile(bundle / "profile.json").configs  # the scheduler reads the bounds
    fresh = write_image_folder(tmp_path / "fresh", 10, seed=11)  # none of the profile's images
    args = ("converter.profile", str(bundle), "--data", str(fresh), "--verify", "10", "--no-progress")
    honest = run_module(*args, "--json", str(tmp_path / "v.json"))
    assert honest.returncode in (0, 1), honest.stderr
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["images"]["n"] == 10 and report["configs"]
    # Claims no replay can meet (a negative bound of -100 pp) fail with exit code 1 ...
    for c in profile["configs"]:
        c["drop_upper_pp"] = -100.0
    (bundle / "profile.json").write_text(json.dumps(profile))
    broken = run_module(*args)
    assert broken.returncode == 1 and "FAIL" in broken.stdout
    # ... and claims every replay meets pass with 0.
    for c in profile["configs"]:
        c["drop_upper_pp"] = 100.0
    (bundle / "profile.json").write_text(json.dumps(profile))
    loose = run_module(*args)
    assert loose.returncode == 0 and " 0 FAIL" in loose.stdout
    # The profile's own images are not fresh: verification refuses them.
    seen = run_module("converter.profile", str(bundle), "--data", str(folder), "--verify", "5")
    assert seen.returncode == 2 and "has not seen" in seen.stderr
