"""The converter end to end: real Keras models in, bundles out, checked independently."""
from __future__ import annotations

import gzip
import json
import random

import numpy as np
import pytest

from splitinfer.litert import head_runner, load_interpreter, run_once
from splitinfer.bundle.keras_tail import load_keras_tail
from splitinfer.bundle.manifest import BundleError, load_manifest
from tests.conftest import run_module

pytestmark = pytest.mark.slow


def independent_check(bundle, split_names, samples=2, seed=1):
    """Head on the LiteRT interpreter, tail reloaded from disk, against the full Keras model."""
    import keras

    manifest = load_manifest(bundle)
    rng = np.random.default_rng(seed)
    xs = rng.uniform(0, 255, size=(samples, *manifest.model.input_shape)).astype(np.float32)
    full = keras.models.load_model(bundle / manifest.keras_model, compile=False)
    reference = np.asarray(full(xs, training=False))
    errors = {}
    for name in split_names:
        split = manifest.split(name)
        if split.head is None:
            acts = xs
        else:
            interp, info = load_interpreter(bundle / split.head, num_threads=1)
            assert info.package == "ai_edge_litert"
            head = head_runner(interp, split.head_signature)
            acts = np.concatenate([head(x[None]) for x in xs])
            assert acts.shape[1:] == split.shape
            # Untrained zoo models saturate to a constant output: check the cut tensor too.
            inner = keras.Model(full.inputs, full.get_layer(split.layer).output)
            expected = np.asarray(inner(xs, training=False))
            head_err = np.max(np.abs(acts - expected)) / max(np.max(np.abs(expected)), 1e-12)
            assert head_err < 1e-3, (name, head_err)
        tail = load_keras_tail(bundle / split.tail)
        got = np.asarray(tail(acts, training=False))
        errors[name] = float(np.max(np.abs(got - reference)) / np.max(np.abs(reference)))
    return errors


def test_tiny_bundle_manifest(tiny_bundle):
    manifest = load_manifest(tiny_bundle)
    names = manifest.split_names
    assert names[0] == "input"
    # The inside of the residual block is not a cut; its ends are.
    assert "res_conv" not in names and "res_relu" not in names
    assert {"stem_relu", "res_add", "dw", "pw", "gap"} <= set(names)
    assert [s.index for s in manifest.splits] == list(range(len(names)))
    flops = [s.head_flops for s in manifest.splits]
    assert flops == sorted(flops) and flops[0] == 0
    for s in manifest.splits:
        assert s.head_flops + s.tail_flops == manifest.full_flops
        assert s.verify["max_rel_err"] <= 1e-3
    data = json.loads((tiny_bundle / "manifest.json").read_text())
    assert data["model"]["input_shape"] == [32, 32, 3]
    assert (tiny_bundle / manifest.full).is_file()


def test_tiny_bundle_every_split_matches_independently(tiny_bundle):
    errors = independent_check(tiny_bundle, load_manifest(tiny_bundle).split_names)
    assert max(errors.values()) < 1e-3, errors


def test_full_tflite_matches_keras(tiny_bundle):
    import keras

    manifest = load_manifest(tiny_bundle)
    x = np.random.default_rng(3).uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)
    interp, _ = load_interpreter(tiny_bundle / manifest.full)
    full = keras.models.load_model(tiny_bundle / manifest.keras_model, compile=False)
    np.testing.assert_allclose(run_once(interp, x), np.asarray(full(x)), atol=1e-5)


def test_heads_share_one_file_with_batch_one(tiny_bundle):
    manifest = load_manifest(tiny_bundle)
    assert {s.head for s in manifest.splits[1:]} == {"heads.tflite"}
    interp, _ = load_interpreter(tiny_bundle / "heads.tflite")
    signatures = interp.get_signature_list()
    assert sorted(signatures) == sorted(s.head_signature for s in manifest.splits[1:])
    for s in manifest.splits[1:]:
        runner = interp.get_signature_runner(s.head_signature)
        assert list(runner.get_input_details()["x"]["shape"]) == [1, 32, 32, 3]
        assert list(runner.get_output_details()["y"]["shape"]) == [1, *s.shape]


def test_tflite_files_name_tensors_by_index(tiny_bundle):
    """Tensor names are the converter's op paths, most of a multi-signature file's non-weights;
    the bundle keeps them as indices only (signatures find tensors by index)."""
    manifest = load_manifest(tiny_bundle)
    for file in (manifest.full, "heads.tflite", manifest.tails_tflite):
        interp, _ = load_interpreter(tiny_bundle / file)
        names = {d["name"] for d in interp.get_tensor_details()}
        assert names and all(n.isdigit() for n in names), (file, sorted(names)[:3])


def test_short_tensor_names_change_nothing_else(tiny_model_path, monkeypatch):
    import keras

    import converter.export
    from converter.compact import short_tensor_names

    model = keras.models.load_model(tiny_model_path, compile=False)
    monkeypatch.setattr(converter.export, "short_tensor_names", lambda flatbuffer: flatbuffer)
    named = converter.export.to_tflite(model, (32, 32, 3))
    compact = short_tensor_names(named)
    assert len(compact) < len(named)
    assert short_tensor_names(compact) == compact  # a fixed point
    x = np.random.default_rng(0).uniform(0, 255, size=(1, 32, 32, 3)).astype(np.float32)
    run = [run_once(load_interpreter(model_content=f)[0], x) for f in (named, compact)]
    np.testing.assert_array_equal(run[0], run[1])


def test_sequential_and_nested_models(tmp_path):
    import keras
    from keras import layers

    seq = keras.Sequential(
        [keras.Input((16, 16, 3)), layers.Conv2D(4, 3, name="c1"), layers.ReLU(name="r1"),
         layers.Flatten(name="flat"), layers.Dense(3, name="logits")], name="seq")
    inp = keras.Input((16, 16, 3))
    out = layers.Softmax(name="sm")(seq(inp))
    nested = keras.Model(inp, out, name="nested")
    path = tmp_path / "nested.keras"
    nested.save(path)
    result = run_module("converter", str(path), "--out", str(tmp_path / "b"), "--no-progress")
    assert result.returncode == 0, result.stderr
    manifest = load_manifest(tmp_path / "b")
    assert manifest.split_names == ["input", "c1", "r1", "logits"]  # flat holds r1's values
    assert manifest.converter["merged"] == {"flat": "r1"}
    errors = independent_check(tmp_path / "b", manifest.split_names)
    assert max(errors.values()) < 1e-3


def test_splits_and_max_splits_options(tiny_model_path, tmp_path):
    result = run_module("converter", str(tiny_model_path), "--out", str(tmp_path / "a"),
                        "--splits", "res_add,gap", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert load_manifest(tmp_path / "a").split_names == ["input", "res_add", "gap"]
    result = run_module("converter", str(tiny_model_path), "--out", str(tmp_path / "b"),
                        "--max-splits", "3", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert len(load_manifest(tmp_path / "b").splits) == 3
    result = run_module("converter", str(tiny_model_path), "--out", str(tmp_path / "c"),
                        "--splits", "nope")
    assert result.returncode == 2 and "Unknown split" in result.stderr


def test_int8_heads(tiny_model_path, tmp_path):
    result = run_module("converter", str(tiny_model_path), "--out", str(tmp_path / "q"),
                        "--splits", "pw", "--int8", "--no-progress")
    assert result.returncode == 0, result.stderr
    split = load_manifest(tmp_path / "q").split("pw")
    interp, _ = load_interpreter(tmp_path / "q" / split.head_int8)
    types = {d["dtype"].__name__ for d in interp.get_tensor_details()}
    assert "int8" in types
    x = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)
    assert run_once(interp, x).shape == (1, *split.shape)


@pytest.mark.parametrize("name,minimum", [("mobilenet_v2", 10), ("resnet50", 16)])
def test_zoo_candidate_counts(name, minimum):
    result = run_module("converter", f"zoo:{name}", "--list", "--input-shape", "96,96,3")
    assert result.returncode == 0, result.stderr
    count = int(result.stdout.split()[0])
    assert count >= minimum, result.stdout


@pytest.mark.parametrize(
    "name,shape", [("mobilenet_v2", "96,96,3"), ("resnet50", "64,64,3"),
                   ("inception_v3", "75,75,3"), ("efficientnet_b0", "64,64,3")])
def test_zoo_models_convert_and_match(name, shape, tmp_path):
    out = tmp_path / name
    result = run_module("converter", f"zoo:{name}", "--out", str(out), "--input-shape", shape,
                        "--max-splits", "5", "--no-progress")
    assert result.returncode == 0, result.stderr
    manifest = load_manifest(out)
    assert not manifest.skipped, manifest.skipped
    names = random.Random(name).sample(manifest.split_names[1:], 3)
    errors = independent_check(out, names, samples=1)
    assert max(errors.values()) < 1e-3, errors


def test_bad_sources_exit_2_with_one_line(tmp_path):
    text = tmp_path / "model.keras"
    text.write_text("this is not a model")
    cases = {
        str(text): "Cannot load",
        str(tmp_path / "missing.keras"): "not found",
        str(tmp_path / "notes.txt"): "not found",
        "zoo:nope": "Unknown zoo model",
    }
    (tmp_path / "notes.txt").write_text("x")
    cases[str(tmp_path / "notes.txt")] = "Expected a file ending"
    for source, message in cases.items():
        result = run_module("converter", source, "--out", str(tmp_path / "out"))
        assert result.returncode == 2, (source, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (source, result.stderr)
        assert not (tmp_path / "out").exists()


def test_subclassed_and_multi_io_models_are_refused(tmp_path):
    import keras
    from keras import layers

    from converter.build import plan
    from converter.graph import UnsupportedModelError

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = layers.Dense(2)

        def call(self, x):
            return self.d(x)

    with pytest.raises(UnsupportedModelError, match="subclassed"):
        plan(Sub())
    a, b = keras.Input((4,)), keras.Input((4,))
    two = keras.Model([a, b], layers.Add()([a, b]))
    with pytest.raises(UnsupportedModelError, match="exactly one input"):
        plan(two)


def test_manifest_checks(tiny_bundle, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle, copy)
    data = json.loads((copy / "manifest.json").read_text())
    (copy / data["splits"][1]["head"]).unlink()
    with pytest.raises(BundleError, match="does not match its manifest"):
        load_manifest(copy)
    data["version"] = 99
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="version 99"):
        load_manifest(copy)


def test_a_layer_named_like_the_tail_input_still_converts(tmp_path):
    """InceptionV3 calls its first Activation `activation`: the cut before it must convert."""
    import keras
    from keras import layers

    inp = keras.Input((16, 16, 3))
    x = layers.Conv2D(4, 3, use_bias=False, name="conv")(inp)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.Activation("relu", name="activation")(x)
    out = layers.Dense(3, name="logits")(layers.GlobalAveragePooling2D(name="gap")(x))
    path = tmp_path / "named.keras"
    keras.Model(inp, out, name="named").save(path)
    result = run_module("converter", str(path), "--out", str(tmp_path / "b"), "--no-progress")
    assert result.returncode == 0, result.stderr
    manifest = load_manifest(tmp_path / "b")
    assert manifest.split_names == ["input", "bn", "activation", "gap"] and not manifest.skipped
    assert max(independent_check(tmp_path / "b", manifest.split_names).values()) < 1e-3


def test_keras_tails_share_the_bundle_model_weights(tiny_bundle, tmp_path):
    """Tail files hold architectures only; the weights are the bundle's one model file."""
    import shutil

    manifest = load_manifest(tiny_bundle)
    model_bytes = (tiny_bundle / manifest.keras_model).stat().st_size
    for s in manifest.splits:
        assert s.tail.endswith(".json.gz")
        assert (tiny_bundle / s.tail).stat().st_size < model_bytes / 4, s.name
        assert (tiny_bundle / s.tail).read_bytes()[:2] == b"\x1f\x8b", s.name  # gzip
    # The weights come from the model file: change it, and every loaded tail changes with it.
    import keras

    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle, copy)
    model = keras.models.load_model(copy / manifest.keras_model, compile=False)
    last = [layer for layer in model.layers if layer.weights][-1]
    rng = np.random.default_rng(0)
    last.set_weights([w + rng.normal(size=w.shape).astype(w.dtype) for w in last.get_weights()])
    model.save(copy / manifest.keras_model)
    x = rng.normal(size=(1, *manifest.split("gap").shape)).astype(np.float32)
    before = np.asarray(load_keras_tail(tiny_bundle / manifest.split("gap").tail)(x))
    after = np.asarray(load_keras_tail(copy / manifest.split("gap").tail)(x))
    assert not np.allclose(before, after)


def test_keras_tail_files_fail_with_one_clear_line(tiny_bundle, tmp_path):
    import shutil

    manifest = load_manifest(tiny_bundle)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle, copy)
    tail = copy / manifest.split("gap").tail
    tail.write_text("{not json")
    with pytest.raises(BundleError, match="Cannot read the tail file"):
        load_keras_tail(tail)
    tail.write_bytes(gzip.compress(b'{"format": "splitinfer-keras-tail"}')[:-6])  # cut short
    with pytest.raises(BundleError, match="Cannot read the tail file"):
        load_keras_tail(tail)
    tail.write_text(json.dumps({"format": "splitinfer-keras-tail", "version": 7}))
    with pytest.raises(BundleError, match="version 7"):
        load_keras_tail(tail)
    (copy / manifest.keras_model).unlink()
    with pytest.raises(BundleError, match="Keras model .* is missing"):
        load_keras_tail(copy / manifest.split("pw").tail)
    with pytest.raises(BundleError, match="does not match its manifest"):
        load_manifest(copy)


def test_tails_saved_as_keras_files_still_load(tiny_bundle, tmp_path):
    """Bundles converted before tail files shared the model's weights keep working."""
    manifest = load_manifest(tiny_bundle)
    tail = load_keras_tail(tiny_bundle / manifest.split("pw").tail)
    tail.save(tmp_path / "pw.keras")
    x = np.random.default_rng(0).normal(size=(2, *manifest.split("pw").shape)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(load_keras_tail(tmp_path / "pw.keras")(x)), np.asarray(tail(x)))


def test_uncompressed_tail_files_still_load(tiny_bundle, tmp_path):
    """Bundles converted before tail files were gzip-compressed keep working."""
    import shutil

    manifest = load_manifest(tiny_bundle)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle, copy)
    packed = copy / manifest.split("pw").tail
    plain = packed.with_name("pw.json")
    plain.write_bytes(gzip.decompress(packed.read_bytes()))
    x = np.random.default_rng(0).normal(size=(2, *manifest.split("pw").shape)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(load_keras_tail(plain)(x)), np.asarray(load_keras_tail(packed)(x)))


def test_heads_that_do_not_convert_together_get_a_file_each(tiny_model_path, tmp_path, monkeypatch):
    import converter.build
    from converter.__main__ import main
    from converter.export import ExportError

    def refused(*args, **kwargs):
        raise ExportError("TFLite conversion of the heads failed: (a test)")

    monkeypatch.setattr(converter.build, "heads_to_tflite", refused)
    assert main([str(tiny_model_path), "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    manifest = load_manifest(tmp_path / "b")
    assert "(a test)" in manifest.converter["heads_tflite_skipped"]
    heads = [s for s in manifest.splits if s.head]
    assert heads and all(s.head == f"heads/{s.name}.tflite" and s.head_signature is None for s in heads)
    assert max(independent_check(tmp_path / "b", manifest.split_names).values()) < 1e-3
