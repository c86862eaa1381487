"""Tests for models/: the Fashion-MNIST loader, the scene generator and CLI, the bundled model."""
from __future__ import annotations

import csv
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from models import fashion_mnist, scenes  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
needs_data = pytest.mark.skipif(
    not (fashion_mnist.data_dir() / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST not installed (apt-get install {fashion_mnist.DEBIAN_PACKAGE})")


# ---------------------------------------------------------------- loader

def _write_idx(path: Path, magic: int, dims: tuple[int, ...], body: bytes) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    with gzip.open(path, "wb") as f:
        f.write(header + body)


@needs_data
def test_loader_reads_both_splits():
    for name, n in (("train", 60000), ("test", 10000)):
        split = fashion_mnist.load_split(name)
        assert split.images.shape == (n, 28, 28) and split.images.dtype == np.uint8
        assert split.labels.shape == (n,) and split.labels.dtype == np.uint8
        assert set(np.unique(split.labels)) == set(range(10))  # every class present
        assert split.images.max() == 255 and split.images.min() == 0
    assert len(fashion_mnist.CLASS_NAMES) == 10
    # Known first test label of Fashion-MNIST: an ankle boot.
    assert fashion_mnist.CLASS_NAMES[fashion_mnist.load_split("test").labels[0]] == "Ankle boot"


def test_loader_missing_directory_names_debian_package(tmp_path):
    with pytest.raises(fashion_mnist.DatasetMissingError) as e:
        fashion_mnist.load_split("test", tmp_path / "nowhere")
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "t10k-images-idx3-ubyte.gz" in msg and str(tmp_path / "nowhere") in msg


def test_loader_rejects_bad_magic_and_shape(tmp_path):
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 0x801, (10000,), bytes(10000))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 0x801, (10000, 28, 28), bytes(10))
    with pytest.raises(fashion_mnist.DatasetFormatError, match="magic"):
        fashion_mnist.load_split("test", tmp_path)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 0x803, (10000, 32, 32), bytes(10))
    with pytest.raises(fashion_mnist.DatasetFormatError, match="shape"):
        fashion_mnist.load_split("test", tmp_path)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 0x803, (10000, 28, 28), bytes(100))
    with pytest.raises(fashion_mnist.DatasetFormatError, match="data bytes"):
        fashion_mnist.load_split("test", tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(fashion_mnist.DatasetFormatError, match="gzipped IDX"):
        fashion_mnist.load_split("test", tmp_path)


def test_loader_reads_a_small_valid_file(tmp_path, monkeypatch):
    monkeypatch.setitem(fashion_mnist._FILES, "test", ("ti.gz", "tl.gz", 3))
    imgs = np.arange(3 * 28 * 28, dtype=np.uint32).astype(np.uint8)
    _write_idx(tmp_path / "ti.gz", 0x803, (3, 28, 28), imgs.tobytes())
    _write_idx(tmp_path / "tl.gz", 0x801, (3,), bytes([4, 0, 9]))
    split = fashion_mnist.load_split("test", tmp_path)
    np.testing.assert_array_equal(split.images.reshape(-1), imgs)
    np.testing.assert_array_equal(split.labels, [4, 0, 9])


def test_loader_unknown_split():
    with pytest.raises(ValueError, match="expected one of"):
        fashion_mnist.load_split("validation")


# ---------------------------------------------------------------- scenes

@needs_data
def test_scenes_shape_dtype_and_range():
    x, y = scenes.make_scenes("test", np.arange(16))
    assert x.shape == (16, 160, 160, 3) and x.dtype == np.uint8
    assert y.shape == (16,) and y.dtype == np.int64 and set(y) <= set(range(10))
    assert x.std() > 20  # not blank
    img, label = scenes.make_scene("train", 3)
    assert img.shape == (160, 160, 3) and img.dtype == np.uint8 and isinstance(label, int)


@needs_data
def test_scenes_deterministic_whatever_the_batch():
    big, ybig = scenes.make_scenes("test", np.arange(300))  # spans several internal chunks
    small, ysmall = scenes.make_scenes("test", [299, 7, 130])
    np.testing.assert_array_equal(small, big[[299, 7, 130]])
    np.testing.assert_array_equal(ysmall, ybig[[299, 7, 130]])
    one, lab = scenes.make_scene("test", 130)
    np.testing.assert_array_equal(one, big[130])
    again, _ = scenes.make_scenes("test", np.arange(300))
    np.testing.assert_array_equal(again, big)


@needs_data
def test_scenes_depend_on_seed_split_and_index():
    a, _ = scenes.make_scene("test", 5, seed=0)
    b, _ = scenes.make_scene("test", 5, seed=1)
    c, _ = scenes.make_scene("test", 6, seed=0)
    d, _ = scenes.make_scene("val", 5, seed=0)
    for other in (b, c, d):
        assert np.abs(a.astype(int) - other.astype(int)).mean() > 5
    # Index 10005 reuses test item 5 but must be a different picture.
    e, _ = scenes.make_scene("test", 10005)
    assert scenes.item_index("test", 10005) == scenes.item_index("test", 5) == 5
    assert np.abs(a.astype(int) - e.astype(int)).mean() > 5


@needs_data
def test_scene_labels_are_the_items_labels():
    train = fashion_mnist.load_split("train")
    test = fashion_mnist.load_split("test")
    for split, data, idx in (("train", train, [0, 1, 54999, 55000, 123456]),
                             ("val", train, [0, 4999, 5000]),
                             ("test", test, [0, 1, 9999, 10000, 31337])):
        _, y = scenes.make_scenes(split, idx)
        items = [scenes.item_index(split, i) for i in idx]
        np.testing.assert_array_equal(y, data.labels[items])
    assert [scenes.item_index("val", i) for i in (0, 4999, 5000)] == [55000, 59999, 55000]
    assert scenes.item_index("train", 55000) == 0  # train never reaches the val items
    _, y = scenes.make_scenes("test", np.arange(1000))
    np.testing.assert_array_equal(y, test.labels[:1000])


@needs_data
def test_scene_shows_the_item_it_is_labelled_with():
    """With a flat background, the foreground silhouette must match the chosen item's."""
    from PIL import Image

    flat = scenes.SceneConfig(blotch_amp=0, stripe_amp=0, grain_amp=0, gradient_amp=0)
    test = fashion_mnist.load_split("test")

    def box(mask: np.ndarray) -> np.ndarray:
        ys, xs = np.nonzero(mask)
        return mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        return float((a & b).sum() / (a | b).sum())

    for i in range(16):
        img, _ = scenes.make_scene("test", i, config=flat)
        fg = box(np.abs(img.astype(int) - img[0, 0].astype(int)).max(axis=2) > 12)
        scores = []
        for j in (i, (i + 1) % 10000, (i + 2) % 10000):  # the item used, and two others
            item = box(test.images[j] > 10)  # the scene makes >= 10/255 visible
            h, w = item.shape
            seen = np.asarray(Image.fromarray(fg.astype(np.uint8) * 255).resize((w, h))) > 127
            scores.append(max(iou(seen, item), iou(seen, item[:, ::-1])))
        assert scores[0] > 0.8, (i, scores)
        assert scores[0] > max(scores[1:]), (i, scores)


def test_scenes_reject_bad_arguments():
    with pytest.raises(ValueError, match="unknown scene split"):
        scenes.make_scenes("dev", [0])
    with pytest.raises(ValueError, match=">= 0"):
        scenes.make_scenes("test", [-1])


@needs_data
def test_scenes_cli_writes_jpegs_and_labels(tmp_path):
    out = tmp_path / "scenes"
    r = subprocess.run([sys.executable, "-m", "models.scenes", "--split", "test", "--limit", "3",
                        "--start", "5", "--out", str(out)], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with open(out / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == [f"test_{i:06d}.jpg" for i in (5, 6, 7)]
    x, y = scenes.make_scenes("test", [5, 6, 7])
    assert [int(r["label"]) for r in rows] == list(y)
    from PIL import Image
    for row, ref in zip(rows, x):
        im = np.asarray(Image.open(out / row["file"]).convert("RGB"))
        assert im.shape == (160, 160, 3)
        assert np.abs(im.astype(int) - ref.astype(int)).mean() < 4  # quality-95 JPEG of it


def test_scenes_cli_clear_error_without_data(tmp_path):
    env = dict(os.environ, FASHION_MNIST_DIR=str(tmp_path / "missing"))
    r = subprocess.run([sys.executable, "-m", "models.scenes", "--limit", "1", "--out",
                        str(tmp_path / "o")], cwd=REPO, capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 2
    assert "apt-get install dataset-fashion-mnist" in r.stderr


# ---------------------------------------------------------------- training helpers

def test_downsample_is_block_mean():
    from models.train_fashion import downsample

    x = np.random.default_rng(0).integers(0, 256, (2, 160, 160, 3), dtype=np.uint8)
    d = downsample(x, 80)
    assert d.shape == (2, 80, 80, 3) and d.dtype == np.float32
    np.testing.assert_allclose(d[1, 3, 4], x[1, 6:8, 8:10].reshape(-1, 3).mean(0), rtol=1e-6)
    with pytest.raises(ValueError, match="divide"):
        downsample(x, 96)


def test_train_indices_reshuffle_each_pass_and_cover_every_item():
    from models.train_fashion import N_TRAIN, train_indices

    steps = N_TRAIN // 50
    first = np.concatenate([train_indices(0, s, 50) for s in range(steps)])
    assert sorted(first) == list(range(N_TRAIN))
    second = np.concatenate([train_indices(0, s, 50) for s in range(steps, 2 * steps)])
    assert sorted(second % N_TRAIN) == list(range(N_TRAIN)) and second.min() >= N_TRAIN
    assert not np.array_equal(first, second % N_TRAIN)
    np.testing.assert_array_equal(train_indices(0, 3, 50), train_indices(0, 3, 50))


# ---------------------------------------------------------------- model

def test_build_model_is_flat_with_preprocessing_inside():
    import keras
    from models import fashion

    m = fashion.build_model(alpha=0.75)
    assert m.input_shape == (None, 160, 160, 3) and m.output_shape == (None, 10)
    assert not [l for l in m.layers if isinstance(l, keras.Model)], "nested sub-model"
    pre = m.layers[1]
    assert isinstance(pre, keras.layers.Rescaling)
    out = np.asarray(pre(np.array([[[[0.0, 127.5, 255.0]]]], dtype=np.float32)))
    np.testing.assert_allclose(out.reshape(-1), [-1.0, 0.0, 1.0], atol=1e-6)
    bns = [l for l in m.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and all(l.momentum == fashion.BN_MOMENTUM for l in bns)
    p = np.asarray(m(np.zeros((1, 160, 160, 3), np.float32)))
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="alpha"):
        fashion.build_model(alpha=0.5)


def test_shipped_files_and_metadata():
    from models import fashion

    meta = fashion.metadata()
    weights = fashion.HERE / meta["weights"]
    assert weights.is_file() and weights.stat().st_size <= 10e6
    import hashlib
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == meta["weights_sha256"]
    assert meta["labels"] == list(fashion_mnist.CLASS_NAMES)
    assert meta["input_shape"] == [160, 160, 3]
    assert meta["test_n"] == 10000
    # The product target: at least 85 % top-1 on the full composited test set (measured by the
    # training script on all 10,000 scenes; the fixed subset is re-checked in the next test).
    assert meta["target_top1"] == 0.85
    assert meta["test_top1"] >= 0.85 and meta["test_subset_top1"] >= 0.85
    assert meta["target_met"] is True
    for key in ("test_subset_top1", "training_time_s", "command", "seed", "preprocessing"):
        assert key in meta, key
    assert json.loads(fashion.METADATA_PATH.read_text()) == meta


@needs_data
@pytest.mark.slow
def test_shipped_weights_reach_reported_accuracy_on_fixed_subset():
    from models import fashion

    model = fashion.load_trained()
    x, y = scenes.make_scenes("test", np.arange(scenes.TEST_SUBSET))
    p = model.predict(x.astype(np.float32), batch_size=100, verbose=0)
    top1 = float((p.argmax(1) == y).mean())
    reported = fashion.metadata()["test_subset_top1"]
    assert abs(top1 - reported) <= 0.01, (top1, reported)


# ---------------------------------------------------------------- the heavy model


def test_heavy_model_ships_with_its_training_record():
    import hashlib

    from models import fashion

    meta = fashion.metadata(fashion.HERE / fashion.VARIANTS["fashion-inception"])
    weights = fashion.HERE / meta["weights"]
    assert weights.name.endswith(".weights16.npz") and meta["weights_dtype"] == "float16"
    assert weights.stat().st_size <= 60e6
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == meta["weights_sha256"]
    assert meta["arch"] == "inception_v3" and meta["name"] == "fashion-inception"
    assert meta["input_shape"] == [160, 160, 3] and meta["labels"] == list(fashion_mnist.CLASS_NAMES)
    assert meta["test_n"] == 10000 and meta["test_top1"] >= 0.80
    for key in ("training_time_s", "training_images", "command", "config", "versions", "log"):
        assert key in meta, key


def test_heavy_model_builds_flat_and_loads_its_float16_weights():
    import keras

    from models import fashion, zoo

    model = zoo.build("fashion-inception")
    assert model.input_shape == (None, 160, 160, 3) and model.output_shape == (None, 10)
    assert not [layer for layer in model.layers if isinstance(layer, keras.Model)]
    assert model.count_params() > 20e6            # the heavy one: InceptionV3
    with pytest.raises(ValueError, match="another architecture"):
        fashion.load_weights(fashion.build_model(alpha=0.75),
                             fashion.HERE / fashion.metadata(
                                 fashion.HERE / "fashion_inception.json")["weights"])


@needs_data
@pytest.mark.slow
def test_heavy_weights_reach_their_recorded_accuracy_on_the_fixed_subset():
    from models import fashion

    model = fashion.load_variant("fashion-inception")
    x, y = scenes.make_scenes("test", np.arange(scenes.TEST_SUBSET))
    p = model.predict(x.astype(np.float32), batch_size=50, verbose=0)
    top1 = float((p.argmax(1) == y).mean())
    reported = fashion.metadata(fashion.HERE / "fashion_inception.json")["test_subset_top1"]
    assert abs(top1 - reported) <= 0.01, (top1, reported)
