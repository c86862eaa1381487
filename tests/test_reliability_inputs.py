"""Bad input to the converter, the edge and the cloud CLIs: one-line errors, exit 2, nothing half-written.

Extends tests/test_converter.py (a text file named .keras, missing files, bad zoo names) and
tests/test_edge.py (a missing bundle, a 40x30 image) with corrupt model files, tampered bundles
(versions, manifests that do not match their files, calibration.json), and images of the wrong
format. The CLIs' `main` runs in-process where that is the same code path as `python -m ...`
(much faster: no TensorFlow import per case); the edge and cloud CLIs also run once as real
subprocesses here, the converter's in tests/test_converter.py (a model that cannot be loaded).
"""
from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_module
from splitinfer.testing import CloudProcess

pytestmark = pytest.mark.slow


def listing(folder: Path) -> list[str]:
    """Everything under `folder`, hidden entries included, with sizes (to see any change)."""
    return sorted(f"{p.relative_to(folder)}:{p.stat().st_size if p.is_file() else 'd'}"
                  for p in folder.rglob("*"))


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ---- the converter ----------------------------------------------------------------------------


def _zip_with(src: Path, dst: Path, replace: dict[str, bytes | None]) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            if item.filename in replace:
                if replace[item.filename] is not None:
                    zout.writestr(item.filename, replace[item.filename])
            else:
                zout.writestr(item, zin.read(item.filename))
    return dst


@pytest.fixture(scope="module")
def bad_models(tiny_model_path, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad-models")
    data = tiny_model_path.read_bytes()
    config = json.loads(zipfile.ZipFile(tiny_model_path).read("config.json"))
    config["config"]["layers"][1]["class_name"] = "NoSuchLayer"
    rng = np.random.default_rng(0)
    out = {
        "truncated.keras": data[: len(data) // 2],
        "random.h5": rng.bytes(4096),
        "empty.keras": b"",
        "random.keras": b"PK\x03\x04" + rng.bytes(2000),
    }
    for name, content in out.items():
        (d / name).write_bytes(content)
    models = {name: d / name for name in out}
    models["bad-config.keras"] = _zip_with(tiny_model_path, d / "bad-config.keras", {"config.json": b"{nope"})
    models["no-weights.keras"] = _zip_with(tiny_model_path, d / "no-weights.keras",
                                           {"model.weights.h5": None})
    models["unknown-layer.keras"] = _zip_with(tiny_model_path, d / "unknown-layer.keras",
                                              {"config.json": json.dumps(config).encode()})
    return models


@pytest.mark.parametrize("name", ["truncated.keras", "random.h5", "empty.keras", "random.keras",
                                  "bad-config.keras", "no-weights.keras", "unknown-layer.keras"])
def test_corrupt_models_fail_in_one_line_and_write_nothing(bad_models, name, tmp_path, capsys):
    from converter.__main__ import main

    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "keep.txt").write_text("unrelated")
    before = listing(parent)
    assert main([str(bad_models[name]), "--out", str(parent / "bundle"), "--no-progress"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error: Cannot load ") and name in line, line
    assert "not found" not in line.lower(), line  # the file is there: say what is wrong with it
    assert listing(parent) == before  # no bundle, no temporary directory


@pytest.fixture
def existing_bundle(tiny_model_path, tmp_path, capsys):
    from converter.__main__ import main

    parent = tmp_path / "parent"
    parent.mkdir()
    assert main([str(tiny_model_path), "--out", str(parent / "bundle"), "--splits", "pw",
                 "--no-progress"]) == 0
    capsys.readouterr()
    return parent / "bundle"


def test_a_failed_conversion_keeps_the_old_bundle_and_leaves_no_temp_dirs(
        existing_bundle, tiny_model_path, monkeypatch, capsys):
    import converter.build
    from converter.__main__ import main

    parent = existing_bundle.parent
    before = listing(parent)
    manifest = (existing_bundle / "manifest.json").read_bytes()
    calls = []

    def failing(*args, **kwargs):  # after the temporary bundle directory exists
        calls.append(1)
        assert any(p.name.startswith(".bundle.") for p in parent.iterdir())
        raise ValueError("injected export failure")

    monkeypatch.setattr(converter.build, "to_tflite", failing)
    assert main([str(tiny_model_path), "--out", str(existing_bundle), "--no-progress"]) == 2
    assert calls and one_error_line(capsys.readouterr().err) == "error: injected export failure"
    assert listing(parent) == before
    assert (existing_bundle / "manifest.json").read_bytes() == manifest


def test_an_interrupted_conversion_keeps_the_old_bundle(existing_bundle, tiny_model_path, monkeypatch):
    import converter.build
    from converter.__main__ import main

    parent = existing_bundle.parent
    before = listing(parent)
    written = []
    real = converter.build.to_tflite

    def full_model(*args, **kwargs):
        written.append(1)
        return real(*args, **kwargs)

    def interrupted(*args, **kwargs):  # the full model is written; the heads are being exported
        assert written
        raise KeyboardInterrupt

    monkeypatch.setattr(converter.build, "to_tflite", full_model)
    monkeypatch.setattr(converter.build, "heads_to_tflite", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main([str(tiny_model_path), "--out", str(existing_bundle), "--no-progress"])
    assert listing(parent) == before


@pytest.mark.parametrize("kind", ["directory", "file"])
def test_out_naming_something_that_is_not_a_bundle_is_refused(tiny_model_path, tmp_path, capsys, kind):
    from converter.__main__ import main

    mine = tmp_path / "my-notes"
    if kind == "directory":
        mine.mkdir()
        (mine / "notes.txt").write_text("precious")
    else:
        mine.write_text("precious")
    before = listing(tmp_path)
    code = main([str(tiny_model_path), "--out", str(mine), "--splits", "pw", "--no-progress"])
    assert code == 2 and "is not a bundle" in one_error_line(capsys.readouterr().err)
    assert listing(tmp_path) == before
    assert (mine / "notes.txt" if kind == "directory" else mine).read_text() == "precious"


def test_bundles_are_readable_by_other_users(existing_bundle):
    """tempfile makes 0700 directories and 0600 files; a server running as another user must
    still read the bundle, so it gets the modes a plain mkdir/open would (umask applies)."""
    import os
    import stat

    umask = os.umask(0o022)
    os.umask(umask)
    for path in [existing_bundle, *existing_bundle.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        want = (0o777 if path.is_dir() else 0o666) & ~umask
        assert mode == want, (path.relative_to(existing_bundle.parent), oct(mode), oct(want))


# ---- tampered bundles: edge and cloud CLIs ------------------------------------------------------


def _json_edit(name: str, edit):
    def apply(bundle: Path) -> None:
        path = bundle / name
        data = edit(json.loads(path.read_text()))
        path.write_text(data if isinstance(data, str) else json.dumps(data))
    return apply


def _first_ranges(data: dict) -> dict:
    entry = next(iter(data["splits"].values()))
    return entry.get("ranges", entry)


def _shift_lo(data):
    _first_ranges(data)["lo"][0] -= 1.0  # the stored reference no longer matches
    return data


def _nan_lo(data):
    r = _first_ranges(data)
    r["lo"][0] = float("nan")
    r.pop("reference", None)
    return data


TAMPERED = {  # name: (edit, words the one-line error must contain, for edge and cloud)
    "manifest-version": (_json_edit("manifest.json", lambda d: {**d, "version": 2}), "version 2"),
    "manifest-not-json": (lambda b: (b / "manifest.json").write_text("{"), "Cannot read"),
    "manifest-not-a-bundle": (_json_edit("manifest.json", lambda d: [d]), "Not a bundle manifest"),
    "manifest-split-no-tail": (_json_edit("manifest.json", lambda d: {
        **d, "splits": [{k: v for k, v in s.items() if k != "tail"} for s in d["splits"]]}),
        "Malformed bundle manifest"),
    "manifest-missing-file": (lambda b: (b / "tails" / "pw.json.gz").unlink(), "does not match its manifest"),
    "calibration-values": (_json_edit("calibration.json", _shift_lo), "does not match its values"),
    "calibration-nan": (_json_edit("calibration.json", _nan_lo), "NaN"),
    "calibration-other-model": (_json_edit("calibration.json", lambda d: {**d, "model_sha256": "0" * 64}),
                                "calibration.json"),
    "calibration-not-json": (lambda b: (b / "calibration.json").write_text("{nope"), "Cannot read"),
}
MALFORMED_CALIBRATION = {  # edge and cloud share one reader, and refuse these alike
    "calibration-list": (_json_edit("calibration.json", lambda d: [d]), "calibration.json"),
    "calibration-splits-list": (_json_edit("calibration.json", lambda d: {**d, "splits": [1]}),
                                "calibration.json"),
    "calibration-version": (_json_edit("calibration.json", lambda d: {**d, "version": 7}), "version 7"),
}


def _tampered(profiled_bundle, tmp_path: Path, name: str, table: dict) -> Path:
    bundle = tmp_path / name
    shutil.copytree(profiled_bundle[0], bundle)
    table[name][0](bundle)
    return bundle


def _edge(bundle: Path, images: Path, capsys, *extra: str) -> tuple[int, str]:
    from edge_runtime.__main__ import main

    code = main(["--bundle", str(bundle), "--policy", "device", "--images", str(images), *extra])
    return code, capsys.readouterr().err


def _cloud(bundle: Path, capsys, monkeypatch) -> tuple[int, str]:
    import cloud_runtime.serve as serve

    def never(*a, **k):
        raise AssertionError("the bundle was accepted: the server would start")

    monkeypatch.setattr(serve, "_gunicorn_app", never)
    code = serve.main(["--bundle", str(bundle), "--port", "0"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(TAMPERED))
def test_tampered_bundles_are_refused_by_the_edge_and_the_cloud(profiled_bundle, tmp_path, name,  # noqa: F811
                                                                capsys, monkeypatch):
    bundle = _tampered(profiled_bundle, tmp_path, name, TAMPERED)
    words = TAMPERED[name][1]
    code, err = _edge(bundle, profiled_bundle[1], capsys)
    assert code == 2 and words in one_error_line(err), (name, err)
    code, err = _cloud(bundle, capsys, monkeypatch)
    assert code == 2 and words in one_error_line(err), (name, err)


@pytest.mark.parametrize("name", sorted(MALFORMED_CALIBRATION))
def test_malformed_calibration_is_refused_by_the_cloud(profiled_bundle, tmp_path, name, capsys,  # noqa: F811
                                                       monkeypatch):
    bundle = _tampered(profiled_bundle, tmp_path, name, MALFORMED_CALIBRATION)
    code, err = _cloud(bundle, capsys, monkeypatch)
    assert code == 2 and MALFORMED_CALIBRATION[name][1] in one_error_line(err), err


@pytest.mark.parametrize("name", sorted(MALFORMED_CALIBRATION))
def test_malformed_calibration_is_refused_by_the_edge(profiled_bundle, tmp_path, name, capsys):  # noqa: F811
    bundle = _tampered(profiled_bundle, tmp_path, name, MALFORMED_CALIBRATION)
    code, err = _edge(bundle, profiled_bundle[1], capsys)
    assert code == 2 and MALFORMED_CALIBRATION[name][1] in one_error_line(err), err


def test_a_profile_entry_without_split_is_refused_by_the_edge(profiled_bundle, tmp_path, capsys):  # noqa: F811
    bundle = _tampered(profiled_bundle, tmp_path, "p", {"p": (_json_edit(
        "profile.json", lambda d: {**d, "configs": [{"bits": 8}] + d["configs"]}), "")})
    code, err = _edge(bundle, profiled_bundle[1], capsys)
    assert code == 2 and "'split'" in one_error_line(err) and "profile.json" in err, err


@pytest.mark.parametrize("target", ["heads.tflite", "full.tflite"])
def test_corrupt_tflite_files_are_refused_by_the_edge(profiled_bundle, tmp_path, target,  # noqa: F811
                                                      capsys):
    bundle = tmp_path / "b"
    shutil.copytree(profiled_bundle[0], bundle)
    (bundle / target).write_bytes(np.random.default_rng(1).bytes(3000))
    code, err = _edge(bundle, profiled_bundle[1], capsys, "--policy", "fixed", "--split", "pw",
                      "--bits", "8", "--cloud", "http://127.0.0.1:9")
    assert code == 2 and "Not a loadable TFLite model" in one_error_line(err) and target in err


def test_tampered_bundle_through_the_real_clis(profiled_bundle, tmp_path):  # noqa: F811
    bundle = _tampered(profiled_bundle, tmp_path, "manifest-version", TAMPERED)
    r = run_module("edge_runtime", "--bundle", str(bundle), "--policy", "device", "--images",
                   str(profiled_bundle[1]))
    assert r.returncode == 2 and "version 2" in one_error_line(r.stderr)
    r = run_module("cloud_runtime", "--bundle", str(bundle), "--port", "0", timeout=60)
    assert r.returncode == 2 and "version 2" in one_error_line(r.stderr)


@pytest.mark.parametrize("backend, corrupt", [("tf", "tails/pw.json.gz"), ("tf", "model.keras"),
                                              ("litert", "tails.tflite")])
def test_a_corrupt_tail_makes_the_cloud_say_why_it_is_not_ready(profiled_bundle, tmp_path,  # noqa: F811
                                                                backend, corrupt):
    import time

    import requests

    bundle = tmp_path / "b"
    shutil.copytree(profiled_bundle[0], bundle)
    (bundle / corrupt).write_bytes(b"PK\x03\x04" + bytes(500))
    name = corrupt.rsplit("/", 1)[-1]
    cloud = CloudProcess(bundle, tmp_path / "cloud.log", ["--tail-backend", backend])
    cloud.launch()  # the manifest is fine, so it starts; loading the tails fails in the worker
    try:
        deadline, ready = time.monotonic() + 90, None
        while time.monotonic() < deadline and cloud.alive():
            try:
                ready = requests.get(f"{cloud.url}/readyz", timeout=2)
                if ready.json().get("start_error"):
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        assert ready is not None and ready.status_code == 503, cloud.log_text()[-2000:]
        assert ready.headers["Retry-After"] and name in ready.json()["start_error"]
        from splitinfer.bundle.manifest import load_manifest
        from splitinfer.codec import pack

        m = load_manifest(bundle)
        split = m.split("dw")  # a tail that is fine: the worker as a whole is not ready
        payload = pack(np.zeros(split.shape, np.float32), 8, model_sha256=m.model.sha256,
                       split=split.name, split_index=split.index)
        r = requests.post(f"{cloud.url}/v1/infer", data=payload, timeout=5)
        assert r.status_code == 503 and r.json()["code"] == "not_ready" and name in r.json()["error"]
        assert requests.get(f"{cloud.url}/healthz", timeout=5).status_code == 200
        assert cloud.alive()
    finally:
        cloud.kill()


# ---- images -----------------------------------------------------------------------------------


def png_bomb(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG of width x height, compressed without ever being held."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    z, row, parts = zlib.compressobj(9), bytes(1 + (width + 7) // 8), []  # filter byte + pixels
    for _ in range(height // 1000):
        parts.append(z.compress(row * 1000))
    parts.append(z.compress(row * (height % 1000)) + z.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts))
            + chunk(b"IEND", b""))


def _png(size=(32, 32), mode="RGB", fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format=fmt)
    return buf.getvalue()


BAD_IMAGES = {  # file name: (bytes, words in the error)
    "gif-named.png": (_png(mode="P", fmt="GIF"), "expected a JPEG or PNG"),
    "bmp-named.jpg": (_png(fmt="BMP"), "expected a JPEG or PNG"),
    "text.jpg": (b"not an image at all\n", "not a readable image"),
    "empty.png": (b"", "not a readable image"),
    "truncated.png": (_png()[:60], "not a readable"),
    "tall.jpg": (_png(size=(32, 64), fmt="JPEG"), "32x32"),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_images_of_the_wrong_size_or_format_are_refused_in_one_line(profiled_bundle, tmp_path,  # noqa: F811
                                                                    name, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "ok.png").write_bytes(_png())  # one good frame first: nothing runs before the check
    (folder / name).write_bytes(BAD_IMAGES[name][0])
    out = tmp_path / "run.jsonl"
    code, err = _edge(profiled_bundle[0], folder, capsys, "--jsonl", str(out))
    assert code == 2, err
    line = one_error_line(err)
    assert BAD_IMAGES[name][1] in line and name in line, line
    assert not out.exists() or out.read_text() == ""  # no frame was answered before the error


def test_a_pixel_bomb_is_refused_in_one_line(profiled_bundle, tmp_path, capsys):  # noqa: F811
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(png_bomb(20000, 20000))  # 400 Mpixel in 50 kB
    code, err = _edge(profiled_bundle[0], folder, capsys)
    assert code == 2 and "32x32" in one_error_line(err)


def test_images_in_other_modes_of_the_right_size_are_accepted(profiled_bundle, tmp_path,  # noqa: F811
                                                              capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for mode in ("L", "RGBA", "P"):
        (folder / f"{mode}.png").write_bytes(_png(mode=mode))
    (folder / "g.jpg").write_bytes(_png(mode="L", fmt="JPEG"))
    code, err = _edge(profiled_bundle[0], folder, capsys)
    assert code == 0, err


def test_a_malformed_labels_file_is_refused_in_one_line(profiled_bundle, tmp_path, capsys):  # noqa: F811
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(_png())
    (folder / "labels.csv").write_text("file,label\na.png,cat\n")
    code, err = _edge(profiled_bundle[0], folder, capsys)
    assert code == 2 and "labels.csv:2" in one_error_line(err)


def test_a_profile_naming_allocations_that_calibration_lacks_is_refused_by_the_edge(
        profiled_bundle, tmp_path, capsys):  # noqa: F811
    bundle = tmp_path / "unallocated"
    shutil.copytree(profiled_bundle[0], bundle)
    profile = json.loads((bundle / "profile.json").read_text())
    allocated = sorted({c["split"] for c in profile["configs"] if c["variant"] == "allocated"})
    assert allocated, "the tiny bundle's profile has per-channel configurations"
    _json_edit("calibration.json", lambda d: {**d, "splits": {
        k: {kk: vv for kk, vv in v.items() if kk != "allocated"} for k, v in d["splits"].items()}})(bundle)
    code, err = _edge(bundle, profiled_bundle[1], capsys)
    assert code == 2 and "no allocation" in err and allocated[0] in err, err
    assert "Traceback" not in err
