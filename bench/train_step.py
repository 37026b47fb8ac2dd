"""Skip-gram training step time: optimizers side by side, with and without pooled CPU memory.

    python bench/train_step.py                       # 100k items, batches of 65,536 pairs
    python bench/train_step.py --items 1000000 --optimizers adam,lazy_adam

One fixed batch of (target, context, 5 negatives) pairs drawn from a Zipf
unigram^0.75 distribution, fed again and again to Keras `fit` on the
behaviour tower (text tower off, `skipgram` objective), so only the train
step is timed: no data pipeline. Each allocator setting runs in its own
process (TensorFlow reads `TF_CPU_ALLOCATOR_USE_BFC` at its first
operation): "bfc" is tfrec's default, "default" is TensorFlow's own
allocator. Printed per row: median and p90 ms per step, pairs/s, and the
process's peak RSS after that row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def child(args) -> None:
    sys.path.insert(0, ROOT)
    import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
    import tensorflow as tf
    import tf_keras as keras

    from tfrec.config import ModelConfig
    from tfrec.data.vocab import ItemVocabulary
    from tfrec.models import build_model

    n, b, k = args.items, args.batch, args.negatives
    rng = np.random.default_rng(0)
    counts = np.concatenate([[0], np.sort(rng.zipf(1.5, n) % 10_000 + 1)[::-1]]).astype(np.int64)
    vocab = ItemVocabulary(ids=np.array(["<oov>"] + [str(i) for i in range(n)], object),
                           text=np.array([""] * (n + 1), object),
                           market=np.full(n + 1, -1, np.int32), market_names=[], counts=counts)
    p = counts[1:] ** 0.75
    p = p / p.sum()

    def draw(shape):
        return (rng.choice(n, size=shape, p=p) + 1).astype(np.int32)

    batch = {"target": draw(b), "context": draw(b), "negatives": draw((b, k)),
             "weight": np.ones(b, np.float32)}
    dataset = tf.data.Dataset.from_tensors({key: tf.constant(v) for key, v in batch.items()})

    class StepTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_train_batch_begin(self, batch, logs=None):
            self.started = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.seconds.append(time.perf_counter() - self.started)

    for name in args.optimizers.split(","):
        # Not tfrec.optimizers.build_optimizer: this script also runs on checkouts from
        # before that module existed, to time the step as it was.
        if name == "lazy_adam":
            from tfrec.optimizers import LazyAdam
            optimizer = LazyAdam(0.01)
        else:
            optimizer = {"adam": keras.optimizers.Adam, "adagrad": keras.optimizers.Adagrad,
                         "sgd": keras.optimizers.SGD}[name](0.01)
        model = build_model(ModelConfig(embedding_dim=args.dim, use_text=False,
                                        objective="skipgram"), vocab, seed=1)
        model.compile(optimizer=optimizer)
        model.fit(dataset.repeat(3), epochs=1, verbose=0)  # trace and warm up
        times = StepTimes()
        model.fit(dataset.repeat(args.steps), epochs=1, verbose=0, callbacks=[times])
        ms = np.array(times.seconds) * 1000
        with open("/proc/self/status") as status:
            peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
        print(json.dumps({"optimizer": name, "median_ms": float(np.median(ms)),
                          "p90_ms": float(np.percentile(ms, 90)), "peak_mb": peak / 1024}),
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=65_536)
    parser.add_argument("--negatives", type=int, default=5)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--optimizers", default="adam,lazy_adam,adagrad,sgd")
    parser.add_argument("--allocators", default="bfc,default",
                        help="bfc (tfrec's default) and/or default (TensorFlow's)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    print(f"{args.items:,} items, batches of {args.batch:,} pairs x {args.negatives} negatives, "
          f"dim {args.dim}, {args.steps} steps per row, {os.cpu_count()} cores")
    rows = []
    for allocator in args.allocators.split(","):
        env = dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC="true" if allocator == "bfc" else "false")
        command = [sys.executable, os.path.abspath(__file__), "--child"] + [
            f"--{key}={value}" for key, value in (
                ("items", args.items), ("batch", args.batch), ("negatives", args.negatives),
                ("dim", args.dim), ("steps", args.steps), ("optimizers", args.optimizers))]
        out = subprocess.run(command, env=env, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{allocator}: child failed\n{out.stderr[-3000:]}")
        for line in out.stdout.splitlines():
            if line.startswith("{"):
                rows.append((allocator, json.loads(line)))
    base = rows[0][1]["median_ms"]
    print(f"\n{'allocator':<11}{'optimizer':<11}{'median ms':>10}{'p90 ms':>8}{'pairs/s':>11}"
          f"{'vs first':>10}{'peak RSS MB':>13}")
    for allocator, row in rows:
        print(f"{allocator:<11}{row['optimizer']:<11}{row['median_ms']:>10.0f}{row['p90_ms']:>8.0f}"
              f"{args.batch / row['median_ms'] * 1000:>11,.0f}{base / row['median_ms']:>9.2f}x"
              f"{row['peak_mb']:>13,.0f}")


if __name__ == "__main__":
    main()
