"""Train the bundled model from scratch on shelf-camera scenes, on a shared 2-core CPU.

Why it looks like this:
- The cores are shared, so the recipe is budgeted in wall-clock time, not steps: the learning
  rate follows a cosine over elapsed time and each phase ends on time. A slow machine gets fewer
  steps but always a fully annealed model. The steps actually taken are recorded in the metadata.
- Most of the time is spent at 80x80 (the 160x160 scenes 2x2-averaged, ~4x cheaper per image),
  then the same weights are fine-tuned at 160x160, the resolution the model ships at.
- Keras' MobileNetV2 uses BatchNorm momentum 0.999, whose moving statistics lag a short run so
  badly that inference falls to chance; we use 0.9 and re-estimate the statistics at 160 at the end.
- Scenes are generated on the fly (new scene parameters every pass), so no augmentation is needed.

Usage: python -m models.train_fashion [--budget-min 58] [--seed 0] [--out models/]
       python -m models.train_fashion --arch inception_v3 --name fashion-inception --batch 32 ...
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from models import fashion, scenes
from models.fashion_mnist import CLASS_NAMES

N_TRAIN = scenes.SPLITS["train"][2]


@dataclass
class TrainConfig:
    """Everything that defines a run; stored verbatim in the metadata."""

    arch: str = "mobilenet_v2"     # one of fashion.ARCHITECTURES
    name: str = "fashion"          # zoo name; files are <name with _>.json and .weights.h5/.weights16.npz
    float16: bool = False          # store weights in float16 (.weights16.npz): heavy models only
    alpha: float = 0.75
    seed: int = 0
    scene_seed: int = scenes.DEFAULT_SEED
    batch: int = 64
    low_res: int = 80              # phase A resolution (must divide 160)
    budget_min: float = 58.0       # wall-clock budget for both training phases
    low_res_frac: float = 0.72     # share of the budget spent at low_res
    peak_lr: float = 2e-3
    final_lr_frac: float = 0.01
    warmup_frac: float = 0.03
    weight_decay: float = 5e-5
    label_smoothing: float = 0.05
    epoch_steps_low: int = 250     # steps between checkpoints in phase A
    epoch_steps_high: int = 60     # ... and in phase B
    val_n: int = 500               # val scenes scored at 160 for every checkpoint
    bn_recal_batches: int = 16     # batches at 160 used to re-estimate BatchNorm statistics
    test_n: int = 10000            # test scenes scored at the end
    out: str = "models"
    init: str = ""                 # optional weights to start from (a fine-tuning stage)
    first_step: int = 0            # where the scene stream starts (continue a previous run)
    phases: list[dict] = field(default_factory=list)


def downsample(images: np.ndarray, res: int) -> np.ndarray:
    """uint8 (N,160,160,3) -> float32 (N,res,res,3) by block averaging (160 must divide)."""
    f = scenes.SIZE // res
    if f * res != scenes.SIZE:
        raise ValueError(f"low_res={res} must divide {scenes.SIZE}")
    x = images.astype(np.float32)
    if f == 1:
        return x
    return x.reshape(len(x), res, f, res, f, 3).mean(axis=(2, 4))


def train_indices(seed: int, step: int, batch: int) -> np.ndarray:
    """Scene indices of global step `step`: each pass over the 55k train items is reshuffled,
    and pass p uses scene indices p*55000 + item, so every pass draws new scene parameters."""
    flat = np.arange(step * batch, (step + 1) * batch)
    passes, pos = flat // N_TRAIN, flat % N_TRAIN
    out = np.empty(batch, dtype=np.int64)
    for p in np.unique(passes):
        perm = np.random.default_rng([seed, 7, int(p)]).permutation(N_TRAIN)
        m = passes == p
        out[m] = p * N_TRAIN + perm[pos[m]]
    return out


def batches(cfg: TrainConfig, res: int, first_step: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    step = first_step
    while True:
        x, y = scenes.make_scenes("train", train_indices(cfg.seed, step, cfg.batch), cfg.scene_seed)
        yield downsample(x, res), y
        step += 1


def evaluate(model, split: str, n: int, seed: int, batch: int = 100) -> float:
    """Top-1 on scenes 0..n-1 of `split` at 160x160, generated in batches to bound memory."""
    correct = 0
    for s in range(0, n, 500):
        x, y = scenes.make_scenes(split, np.arange(s, min(s + 500, n)), seed)
        p = model.predict(x.astype(np.float32), batch_size=batch, verbose=0)
        correct += int((p.argmax(1) == y).sum())
    return correct / n


def recalibrate_bn(model, cfg: TrainConfig, first_step: int) -> None:
    """Re-estimate BatchNorm moving statistics at 160 with fixed weights (forward passes only)."""
    import keras

    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    for step in range(cfg.bn_recal_batches):
        x, _ = scenes.make_scenes("train", train_indices(cfg.seed + 1, first_step + step, cfg.batch),
                                  cfg.scene_seed)
        for l in bns:  # a cumulative average: weight 1/(k+1) on batch k
            l.momentum = step / (step + 1.0)
        model(x.astype(np.float32), training=True)
    for l in bns:
        l.momentum = fashion.BN_MOMENTUM


def make_callbacks(cfg: TrainConfig, model, t0: float, phase_end: float, res: int, state: dict,
                   log):
    import keras

    total = cfg.budget_min * 60.0

    def lr_at(elapsed: float) -> float:
        frac = min(elapsed / total, 1.0)
        if frac < cfg.warmup_frac:
            return cfg.peak_lr * (0.1 + 0.9 * frac / cfg.warmup_frac)
        f = (frac - cfg.warmup_frac) / (1.0 - cfg.warmup_frac)
        lo = cfg.peak_lr * cfg.final_lr_frac
        return lo + 0.5 * (cfg.peak_lr - lo) * (1.0 + math.cos(math.pi * f))

    class Clock(keras.callbacks.Callback):
        """Time-based LR schedule and phase deadline."""

        def on_train_batch_begin(self, batch, logs=None):
            model.optimizer.learning_rate = lr_at(time.time() - t0)

        def on_train_batch_end(self, batch, logs=None):
            state["steps"] += 1
            if time.time() >= phase_end:
                model.stop_training = True

    class Checkpoint(keras.callbacks.Callback):
        """Score val at 160 after every epoch; keep the best weights on disk."""

        def on_epoch_end(self, epoch, logs=None):
            val = evaluate(model, "val", cfg.val_n, cfg.scene_seed)
            logs = logs or {}
            msg = (f"[{(time.time() - t0) / 60:5.1f} min] res {res} step {state['steps']} "
                   f"loss {logs.get('loss', float('nan')):.4f} train_acc {logs.get('accuracy', 0):.4f} "
                   f"val@160 {val:.4f} lr {float(model.optimizer.learning_rate):.2e}")
            if val > state["best_val"]:
                state["best_val"] = val
                state["best"] = model.get_weights()
                export(state)
                msg += "  (best, saved)"
            log(msg)

    return [Clock(), Checkpoint()]


def export(state: dict) -> None:
    """Write the best weights so far, without optimizer state (3x smaller), to the ship path."""
    state["export"].set_weights(state["best"])
    fashion.save_weights(state["export"], Path(state["ckpt"]))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train(cfg: TrainConfig, command: str) -> dict:
    import keras
    import tensorflow as tf

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log_lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        log_lines.append(msg)

    keras.utils.set_random_seed(cfg.seed)
    stem = cfg.name.replace("-", "_")

    def build(size: int | None = scenes.SIZE):
        return fashion.build_model(alpha=cfg.alpha, size=size, arch=cfg.arch, name=cfg.name)

    model = build(size=None)
    previous = None
    if cfg.init:
        fashion.load_weights(model, Path(cfg.init))
        prev_meta = Path(cfg.init).with_name(f"{stem}.json")
        if prev_meta.is_file():
            previous = {k: v for k, v in json.loads(prev_meta.read_text()).items() if k != "log"}
    model.compile(
        optimizer=keras.optimizers.AdamW(cfg.peak_lr, weight_decay=cfg.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"], jit_compile=False)  # XLA on CPU is ~10x slower for this net
    ckpt = out / (f"{stem}.weights16.npz" if cfg.float16 else f"{stem}.weights.h5")
    shipped = build()  # fixed 160 input, uncompiled: what ships
    state = {"steps": cfg.first_step, "best_val": -1.0, "ckpt": str(ckpt), "export": shipped, "best": None}
    t0 = time.time()
    deadline_a = t0 + cfg.budget_min * 60.0 * cfg.low_res_frac
    deadline_b = t0 + cfg.budget_min * 60.0
    one_hot = lambda gen: ((x, np.eye(len(CLASS_NAMES), dtype=np.float32)[y]) for x, y in gen)

    for res, deadline, epoch_steps in ((cfg.low_res, deadline_a, cfg.epoch_steps_low),
                                       (scenes.SIZE, deadline_b, cfg.epoch_steps_high)):
        first = state["steps"]
        started = time.time()
        if deadline <= time.time():
            continue
        log(f"phase res={res}: from step {first}, until {(deadline - t0) / 60:.1f} min")
        model.fit(one_hot(batches(cfg, res, first)), steps_per_epoch=epoch_steps, epochs=10_000,
                  callbacks=make_callbacks(cfg, model, t0, deadline, res, state, log), verbose=0)
        cfg.phases.append({"res": res, "steps": state["steps"] - first,
                           "images": (state["steps"] - first) * cfg.batch,
                           "minutes": round((time.time() - started) / 60, 2)})
        log(f"phase res={res} done: {cfg.phases[-1]}")

    # The last partial epoch was not scored: score it, then try re-estimated BN statistics.
    last_val = evaluate(model, "val", cfg.val_n, cfg.scene_seed)
    log(f"end of training: val@160 {last_val:.4f} (best checkpoint {state['best_val']:.4f})")
    if last_val > state["best_val"]:
        state["best_val"], state["best"] = last_val, model.get_weights()
    model.set_weights(state["best"])
    recalibrate_bn(model, cfg, state["steps"])
    recal_val = evaluate(model, "val", cfg.val_n, cfg.scene_seed)
    log(f"after BN re-estimation: val@160 {recal_val:.4f}")
    if recal_val >= state["best_val"]:
        state["best_val"], state["best"] = recal_val, model.get_weights()
    export(state)
    train_s = time.time() - t0

    # Score the full test set with the file that ships, loaded back from disk.
    shipped = build()
    fashion.load_weights(shipped, ckpt)
    t1 = time.time()
    subset = evaluate(shipped, "test", scenes.TEST_SUBSET, cfg.scene_seed)
    full = evaluate(shipped, "test", cfg.test_n, cfg.scene_seed) if cfg.test_n else None
    log(f"test top-1: {scenes.TEST_SUBSET} subset {subset:.4f}, {cfg.test_n} scenes {full} "
        f"({time.time() - t1:.0f} s)")
    meta = {
        "version": 1,
        "name": cfg.name,
        "arch": cfg.arch,
        "architecture": (f"keras.applications.MobileNetV2(alpha={cfg.alpha}, weights=None, classes=10)"
                         if cfg.arch == "mobilenet_v2" else
                         "keras.applications.InceptionV3(weights=None, classes=10)"),
        "alpha": cfg.alpha if cfg.arch == "mobilenet_v2" else None,
        "weights_dtype": "float16" if cfg.float16 else "float32",
        "weights": ckpt.name,
        "weights_sha256": file_sha256(ckpt),
        "params": int(shipped.count_params()),
        "labels": list(CLASS_NAMES),
        "input_shape": [scenes.SIZE, scenes.SIZE, 3],
        "input_dtype": "float32",
        "preprocessing": "inside the model: Rescaling(1/127.5, offset=-1): RGB 0..255 -> [-1, 1]",
        "output": "softmax over the 10 labels",
        "dataset": {
            "source": "Fashion-MNIST (Debian dataset-fashion-mnist) composited by models.scenes",
            "scene_seed": cfg.scene_seed,
            "train_items": "Fashion-MNIST train 0..54999", "val_items": "Fashion-MNIST train 55000..59999",
            "test_items": "Fashion-MNIST test 0..9999",
        },
        "test_top1": full,
        "test_n": cfg.test_n,
        "test_subset_top1": subset,
        "test_subset": f"test scenes 0..{scenes.TEST_SUBSET - 1}",
        "val_top1": state["best_val"],
        "val_n": cfg.val_n,
        "training_time_s": round(train_s, 1),
        "training_steps": state["steps"] - cfg.first_step,
        "training_images": (state["steps"] - cfg.first_step) * cfg.batch,
        "total_training_time_s": round(train_s + (previous or {}).get("total_training_time_s", 0.0), 1),
        "command": command,
        "previous_stage": previous,
        "seed": cfg.seed,
        "config": asdict(cfg),
        "reproducibility": "the LR schedule and phase ends follow wall-clock time, so a rerun on a "
                           "differently loaded machine takes a different number of steps",
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                     "keras": keras.__version__, "numpy": np.__version__},
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "log": log_lines,
    }
    (out / f"{stem}.json").write_text(json.dumps(meta, indent=2) + "\n")
    log(f"wrote {ckpt} ({ckpt.stat().st_size / 1e6:.1f} MB) and {out / f'{stem}.json'}")
    return meta


def parse(argv: Sequence[str] | None) -> TrainConfig:
    cfg = TrainConfig()
    ap = argparse.ArgumentParser(prog="python -m models.train_fashion", description=__doc__.split("\n")[0])
    for f, v in asdict(cfg).items():
        if f == "phases":
            continue
        if isinstance(v, bool):
            ap.add_argument("--" + f.replace("_", "-"), action="store_true")
            continue
        ap.add_argument("--" + f.replace("_", "-"), type=type(v), default=v)
    args = vars(ap.parse_args(argv))
    return TrainConfig(**{k: args[k] for k in args})


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse(argv)
    command = "python -m models.train_fashion " + shlex.join(sys.argv[1:] if argv is None else argv)
    train(cfg, command.strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
