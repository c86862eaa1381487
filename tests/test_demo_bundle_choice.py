"""Which bundle `make demo` runs: --fast reuses a full bundle, else builds a small one of its own."""
import json

import pytest

import demo.__main__ as demo


@pytest.fixture
def bundles(tmp_path, monkeypatch):
    full, fast = tmp_path / "fashion", tmp_path / "fashion-fast"
    monkeypatch.setattr(demo, "DEFAULT_BUNDLE", full)
    monkeypatch.setattr(demo, "FAST_BUNDLE", fast)
    monkeypatch.setattr(demo, "source_fingerprint", lambda source: f"{source} weights abc")
    return full, fast


def _profile(images: int) -> dict:
    """The smallest profile.json the product reads, measured on `images` images."""
    return {"version": 3, "dataset": {"n": images}, "confidence": {"level": 0.95},
            "jpeg": {"bytes_mean": 5000.0}, "configs": []}


def make_bundle(path, fingerprint="zoo:fashion weights abc", images=300, device=True, tails=True):
    path.mkdir(parents=True)
    (path / demo.SOURCE_STAMP).write_text(fingerprint + "\n")
    (path / "manifest.json").write_text(json.dumps({"tails_tflite": "tails.tflite"} if tails else {}))
    (path / "profile.json").write_text(json.dumps(_profile(images)))
    if device:
        (path / "device-this-machine.json").write_text("{}")


def chosen(argv):
    args = demo.parse_args(argv)
    demo.choose_bundle(args)
    return args.bundle, args.max_splits, args.profile_limit


def test_fast_with_nothing_built_builds_the_small_bundle(bundles):
    full, fast = bundles
    assert chosen(["--fast"]) == (fast, demo.FAST_SPLITS, demo.FAST_PROFILE_IMAGES)
    assert chosen([]) == (full, demo.FULL_SPLITS, demo.FULL_PROFILE_IMAGES)


def test_fast_reuses_a_ready_full_bundle(bundles):
    full, _ = bundles
    make_bundle(full)
    assert chosen(["--fast"]) == (full, demo.FULL_SPLITS, demo.FAST_PROFILE_IMAGES)


def test_fast_on_a_given_bundle_is_content_with_a_fast_profile(bundles, tmp_path):
    mine = tmp_path / "mine"
    assert chosen(["--fast", "--bundle", str(mine)]) == (mine, demo.FULL_SPLITS, demo.FAST_PROFILE_IMAGES)
    assert chosen(["--bundle", str(mine)]) == (mine, demo.FULL_SPLITS, demo.FULL_PROFILE_IMAGES)


@pytest.mark.parametrize("kind", ["stale", "thin", "no_device_profile", "no_tflite_tails"])
def test_fast_does_not_reuse_a_full_bundle_that_is_not_ready(bundles, kind):
    full, fast = bundles
    make_bundle(full, fingerprint="zoo:fashion weights old" if kind == "stale" else
                "zoo:fashion weights abc", images=100 if kind == "thin" else 300,
                device=kind != "no_device_profile", tails=kind != "no_tflite_tails")
    assert chosen(["--fast"])[0] == fast


def test_explicit_choices_win(bundles, tmp_path):
    mine = tmp_path / "mine"
    assert chosen(["--fast", "--bundle", str(mine), "--max-splits", "3", "--profile-limit", "9"]) == (
        mine, 3, 9)


def test_profiled_images_reads_the_profile_and_tolerates_junk(tmp_path):
    assert demo.profiled_images(tmp_path) == 0
    (tmp_path / "profile.json").write_text("{not json")
    assert demo.profiled_images(tmp_path) == 0
    (tmp_path / "profile.json").write_text(json.dumps({"dataset": {"n": 42}}))  # not a profile
    assert demo.profiled_images(tmp_path) == 0
    unbounded = {k: v for k, v in _profile(42).items() if k != "confidence"}
    (tmp_path / "profile.json").write_text(json.dumps({**unbounded, "version": 2}))
    assert demo.profiled_images(tmp_path) == 0  # no confidence bounds: the demo profiles again
    (tmp_path / "profile.json").write_text(json.dumps(_profile(42)))
    assert demo.profiled_images(tmp_path) == 42


@pytest.mark.parametrize("split_frames", [False, True])
def test_the_timeline_shows_the_bits_colour_bar_only_for_split_frames(split_frames):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [{"where": "device", "split": "full", "bits": None},
            {"where": "cloud", "split": "input", "bits": None}]
    if split_frames:
        rows.append({"where": "split", "split": "mid", "bits": 4})
    fig, ax = plt.subplots()
    try:
        drawn = demo._plot_choices(fig, ax, np.arange(len(rows), dtype=float),
                                   np.array([2, 0, 1][:len(rows)]), rows, full_depth=2)
        assert drawn == split_frames
        assert len(fig.axes) == (2 if split_frames else 1)  # the colour bar is an axes of its own
        labels = ax.get_legend_handles_labels()[1]
        assert labels[:2] == ["device-only", "cloud-only (JPEG or raw input)"]
    finally:
        plt.close(fig)
