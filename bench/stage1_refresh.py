"""Stage 1 trained on after the ranker is fit: does a fresher two-tower help both stages?

    TFREC_DATA=/work/shared/data PYTHONPATH=. python bench/stage1_refresh.py \\
        --run runs/or-s42 --on all --lr-scale 0.3 --epochs 2

A run with a ranking stage trains its two-tower on the training period less
the ranker's slice, and serves that two-tower. This trial restores the run's
two-tower and its fitted ranking stage, trains the two-tower further (on the
ranker's slice alone, or on the whole training period) with the run's
optimizer at `--lr-scale` times its learning rate, and after each epoch
scores the held-out cases with the same ranker, its features read from
the trained-on two-tower in two ways: every vector refreshed (the two-tower's
item embeddings, the text and skip-gram vectors), or the two-tower's item
embeddings alone (the text and skip-gram vectors as the ranker was fit
on). The ranker is not refit, so rows differ by their features alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

import numpy as np

import tfrec  # noqa: F401  (first: it sets up tf.keras before TensorFlow is imported)
from tfrec import training  # noqa: E402,I100
from tfrec.data.pipeline import PairPipeline
from tfrec.data.sequences import NextItemPipeline
from tfrec.optimizers import build_optimizer
from tfrec.ranking.stage import _sessions, evaluate_stages, item_vectors, stage1_training_data
from tfrec.ranking.two_stage import load_stage
from tfrec.run import load_run, prepare_training_data

logger = logging.getLogger("stage1_refresh")


def row(name: str, evaluation: dict) -> str:
    both, first = evaluation, evaluation["stage1"]
    return (f"{name:<34} {both['all']['hr@10']:7.4f} {both['warm']['hr@10']:7.4f} "
            f"{both['cold']['hr@10']:7.4f} {both['warm']['ndcg@10']:9.4f} "
            f"{first['all']['hr@10']:9.4f} {first['cold']['hr@10']:10.4f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="a run folder trained with both stages")
    parser.add_argument("--on", choices=("slice", "all"), default="all",
                        help="train on the ranker's slice alone or the whole training period")
    parser.add_argument("--lr-scale", type=float, default=0.3,
                        help="times the run's learning rate")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config, vocab, model, _ = load_run(args.run)
    data = prepare_training_data(config)
    stage = load_stage(args.run, model)
    if stage is None:
        raise SystemExit(f"{args.run} has no ranking stage")
    k, length = config.train.eval_k, config.model.history_length
    rows = [row("as trained", evaluate_stages(stage, model, data, length, k))]
    train_on = data
    if args.on == "slice":
        _, split = stage1_training_data(config, data)
        sessions = _sessions(config, split.ranker, data.vocab)
        next_items = None
        if data.next_items is not None:
            next_items = NextItemPipeline(sessions, data.vocab, length,
                                          config.train.retrieval_batch_size,
                                          config.data.pairs.seed, data.retrieval_context)
        train_on = dataclasses.replace(
            data, sessions=sessions, next_items=next_items,
            pairs=PairPipeline(sessions, data.vocab, config.data.pairs))
    model.compile(optimizer=build_optimizer(config.train.optimizer,
                                            config.train.learning_rate * args.lr_scale))
    dataset = training.make_dataset(train_on, model.streams)
    for epoch in range(args.epochs):
        train_on.pairs.set_epoch(epoch)
        if train_on.next_items is not None:
            train_on.next_items.set_epoch(epoch)
        model.fit(dataset, epochs=1, verbose=2)
        embeddings = np.asarray(model.item_embeddings(), np.float32)
        _, text, i2v = item_vectors(model, vocab)
        for name, tables in (
                ("every vector", dataclasses.replace(stage.tables, item_embeddings=embeddings,
                                                     text=text, i2v=i2v)),
                ("two-tower embeddings", dataclasses.replace(stage.tables,
                                                             item_embeddings=embeddings))):
            refreshed = dataclasses.replace(stage, tables=tables)
            rows.append(row(f"+{epoch + 1} on {args.on}, {name}",
                            evaluate_stages(refreshed, model, data, length, k)))
    print(f"{'two-tower':<34} {'all':>7} {'warm':>7} {'cold':>7} {'NDCG warm':>9} "
          f"{'stage 1':>9} {'s1 cold':>10}")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
