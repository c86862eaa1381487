"""TFLite tails: written and verified by the converter, chosen by the cloud, equal to Keras."""
import numpy as np
import pytest

from cloud_runtime.backend import TailSpec, choose_backend
from splitinfer.bundle.manifest import load_manifest


def _spec(split: str, tflite: bool) -> TailSpec:
    return TailSpec(model="m", model_sha256="ab" * 32, split=split, path=f"/b/tails/{split}.keras",
                    input_shape=(4,), tflite_path="/b/tails.tflite" if tflite else None,
                    tflite_signature=split if tflite else None)


def test_auto_picks_litert_on_a_cpu_and_tensorflow_on_a_gpu():
    both = [_spec("a", True), _spec("b", True)]
    assert choose_backend("auto", both, gpu=False) == ("litert", "auto: no GPU, every tail has a TFLite form")
    assert choose_backend("auto", both, gpu=True)[0] == "tf"
    assert choose_backend("auto", [_spec("a", True), _spec("b", False)], gpu=False)[0] == "tf"
    assert choose_backend("tf", both) == ("tf", "asked for")
    assert choose_backend("keras", both)[0] == "tf"  # the old name
    assert choose_backend("litert", both) == ("litert", "asked for")
    with pytest.raises(ValueError, match="b has none: reconvert"):
        choose_backend("litert", [_spec("a", True), _spec("b", False)])
    with pytest.raises(ValueError, match="Unknown tail backend"):
        choose_backend("onnx", both)


def test_the_converter_writes_verified_tflite_tails_in_one_file(tiny_bundle):
    """One tails.tflite, a signature per split, each checked against its Keras tail; the
    tails share their weights there, so the file is smaller than the tails apart."""
    from splitinfer.litert import load_interpreter

    manifest = load_manifest(tiny_bundle)
    assert manifest.tails_tflite == "tails.tflite" and manifest.splits_without_tflite_tail == []
    signatures = load_interpreter(tiny_bundle / manifest.tails_tflite)[0].get_signature_list()
    for s in manifest.splits:
        assert s.tail_signature in signatures
        assert 0 <= s.verify["tail_tflite_max_rel_err"] <= manifest.converter["rtol"]
    from converter.export import to_tflite
    from splitinfer.bundle.keras_tail import load_keras_tail

    apart = sum(len(to_tflite(load_keras_tail(tiny_bundle / s.tail), s.shape, batch=None)) for s in manifest.splits)
    # The tiny model's weights are small beside each signature's graph; 0.54x measured.
    assert (tiny_bundle / manifest.tails_tflite).stat().st_size < 0.75 * apart


def test_signature_keys_are_identifiers_and_unique():
    from converter.build import _signature_keys

    assert _signature_keys(["block_1", "a.b", "a-b", "input"]) == ["block_1", "a_b", "a_b_2", "input"]


@pytest.mark.slow
def test_litert_and_keras_backends_agree_on_every_tail(tiny_bundle):
    """Both backends, as the cloud runs them (bucketed batch sizes), on activations of real
    heads: the same top-1 everywhere and logits within the converter's tolerance."""
    from cloud_runtime.litert_backend import LiteRTTailBackend
    from cloud_runtime.registry import ModelRegistry
    from cloud_runtime.tf_backend import KerasTailBackend
    from splitinfer.litert import HeadFiles

    manifest = load_manifest(tiny_bundle)
    registry = ModelRegistry.from_bundles([str(tiny_bundle)])
    lite, keras_backend = LiteRTTailBackend(num_threads=1), KerasTailBackend()
    lite.start()
    keras_backend.start()
    rng = np.random.default_rng(3)
    images = rng.uniform(0, 255, (8, *manifest.model.input_shape)).astype(np.float32)
    for tail in registry.tails():
        split = manifest.split(tail.split)
        if split.head is None:
            acts = images
        else:
            head = HeadFiles(num_threads=1).head(tiny_bundle / split.head, split.head_signature)
            acts = np.concatenate([head(x[None]) for x in images])
        lite.load(tail)
        keras_backend.load(tail)
        for batch in (1, 2, 8):
            a, b = lite.run(tail, acts[:batch]), keras_backend.run(tail, acts[:batch])
            assert a.shape == b.shape
            assert np.array_equal(a.argmax(-1), b.argmax(-1)), tail.split
            assert np.max(np.abs(a - b)) <= 1e-3 * max(1.0, float(np.max(np.abs(b))))
    assert lite.device == "/CPU:0" and lite.device_info()["delegate"] == "XNNPACK"


def test_the_profiler_uses_one_backend_for_the_whole_bundle(tiny_bundle):
    import dataclasses

    from converter.classify import resolve_backend
    from splitinfer.errors import BundleError

    manifest = load_manifest(tiny_bundle)
    assert resolve_backend(manifest) == "litert"
    assert resolve_backend(manifest, "tf") == "tf"
    one_missing = dataclasses.replace(manifest, splits=(dataclasses.replace(manifest.splits[0], tail_signature=None),
                                                        *manifest.splits[1:]))
    assert resolve_backend(one_missing) == "tf"  # every tail_ms on the same footing
    with pytest.raises(BundleError, match="has no TFLite tail"):
        resolve_backend(one_missing, "litert")
    with pytest.raises(ValueError, match="Expected a tail backend"):
        resolve_backend(manifest, "onnx")
