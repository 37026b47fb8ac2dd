"""New items that never sell: how much the Online Retail protocol's catalogue flatters cold figures.

    TFREC_DATA=/work/shared/data PYTHONPATH=. python bench/unsold_items.py --run runs/main

The Online Retail layout's catalogue is the products its kept lines sell
(`tfrec.datasets.online_retail`), so every item without training events
sells after the split: a real catalogue also lists new items that do not.
This trial adds the products the file sells only on lines without a customer
id (dropped by the cleaning, so in no session and no case) to the catalogue
as further new items, each with its most frequent description, and scores
the run's held-out cases with and without them: stage 1 (their text-tower
embeddings in the index), both stages (the ranking stage's tables extended
as `tfrec export --add-items` extends them) and TF-IDF. Items, cases and
the run are otherwise unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types

import numpy as np
import pandas as pd

import tfrec  # noqa: F401  (first: it sets up tf.keras before TensorFlow is imported)
from tfrec.datasets import online_retail, online_retail_path  # noqa: E402,I100
from tfrec.evaluate import baselines
from tfrec.evaluate.stages import StageLists
from tfrec.metrics import hit_rate, rank_targets, target_ranks
from tfrec.ranking.serving import serving_tables
from tfrec.ranking.two_stage import load_stage
from tfrec.run import load_run, prepare_training_data


def unsold_products(vocab) -> pd.DataFrame:
    """(item, text) of the products sold only on lines without a customer id, none of
    them in `vocab`."""
    frame = pd.read_csv(online_retail_path(), dtype=str,
                        usecols=["InvoiceNo", "StockCode", "Description", "Quantity",
                                 "CustomerID"])
    code = frame["StockCode"].str.strip()
    lines = frame[frame["CustomerID"].isna()
                  & code.str.fullmatch(online_retail.PRODUCT_CODE).fillna(False)
                  & ~frame["InvoiceNo"].str.startswith("C").fillna(False)
                  & (pd.to_numeric(frame["Quantity"], errors="coerce") > 0)
                  & frame["Description"].notna()]
    lines = lines.assign(item=code[lines.index])
    known = {str(i).upper() for i in vocab.ids}
    lines = lines[~lines["item"].str.upper().isin(known)]
    texts = lines.groupby("item")["Description"].agg(lambda d: d.value_counts().index[0])
    return pd.DataFrame({"item": texts.index, "text": texts.to_numpy()})


def figures(name: str, ranks: np.ndarray, cold: np.ndarray) -> str:
    return (f"| {name} | {hit_rate(ranks, 10):.4f} | {hit_rate(ranks[~cold], 10):.4f} | "
            f"{hit_rate(ranks[cold], 10):.4f} | {hit_rate(ranks[cold], 50):.4f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="an Online Retail run with a ranking stage")
    args = parser.parse_args(argv)
    config, vocab, model, _ = load_run(args.run)
    if config.data.layout != "online_retail":
        sys.exit(f"{args.run}: not an Online Retail run (data.layout {config.data.layout!r})")
    stage = load_stage(args.run, model)
    data = prepare_training_data(config)
    cases = data.cases
    unsold = unsold_products(vocab)
    texts = unsold["text"].astype(str).tolist()
    print(f"{len(cases):,} cases ({int(cases.cold.sum())} cold targets); catalogue "
          f"{vocab.size - 1:,} items, {int((vocab.counts[1:] == 0).sum())} without events; "
          f"{len(texts)} unsold products added as new items\n")
    print("| catalogue | method | all | warm | cold | cold HR@50 |")
    print("|---|---|---|---|---|---|")
    stage1, items, queries = rank_targets(model, cases.queries, cases.targets,
                                          config.model.history_length)
    added = model.item_encoder.encode_text(np.asarray(texts, dtype=object).astype(str)).numpy()
    tables = serving_tables(stage.tables, model, texts, added, np.zeros(0, np.int64))
    catalogues = {
        "as is": (items, vocab.text, stage),
        "+ unsold": (np.vstack([items, added]),
                     np.concatenate([vocab.text, np.asarray(texts, object)]),
                     dataclasses.replace(stage, tables=tables))}
    for label, (item_vectors, item_texts, item_stage) in catalogues.items():
        valid = np.ones(len(item_vectors), bool)
        valid[0] = False
        text = baselines.tfidf(types.SimpleNamespace(text=item_texts, size=len(item_texts)),
                               cases.queries)
        rows = {"stage 1": target_ranks(queries, item_vectors, cases.targets, cases.queries,
                                        valid),
                "both stages": StageLists.of(item_stage, queries, cases).ranks(
                    item_stage.ranker, item_stage.columns),
                "TF-IDF": target_ranks(text.queries, text.items, cases.targets,
                                       cases.queries, valid)}
        for name, ranks in rows.items():
            print(figures(f"{label} | {name}", ranks, cases.cold))
    return 0


if __name__ == "__main__":
    sys.exit(main())
