"""The item vocabulary: item id <-> index, with the item text table aligned to it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from tfrec.errors import InputError

OOV_TOKEN = "[OOV]"
OOV_INDEX = 0


@dataclasses.dataclass
class ItemVocabulary:
    """Item ids in index order; index 0 is the out-of-vocabulary bucket.

    Items are ordered by descending event count (ties by id), so frequent
    items get small indices and cold items (text but no events) come last.

    Attributes:
      ids: [size] item ids (str); ids[0] is OOV_TOKEN.
      text: [size] item text aligned with ids ("" where none is known).
      market: [size] int32 market index (-1: none), aligned with ids.
      market_names: market index -> market name.
      counts: [size] int64 number of events per item (0 for cold items).
    """

    ids: np.ndarray
    text: np.ndarray
    market: np.ndarray
    market_names: list[str]
    counts: np.ndarray

    def __post_init__(self):
        self._index = pd.Index(self.ids)

    @property
    def size(self) -> int:
        return len(self.ids)

    @property
    def num_warm(self) -> int:
        return int((self.counts[1:] > 0).sum())

    @property
    def num_cold(self) -> int:
        return int((self.counts[1:] == 0).sum())

    def lookup(self, item_ids) -> np.ndarray:
        """Maps item ids to indices; unknown ids map to OOV_INDEX (0)."""
        positions = self._index.get_indexer(np.asarray(item_ids, dtype=object))
        positions = positions.astype(np.int32)
        positions[positions < 0] = OOV_INDEX
        return positions

    def index_of(self, item_id: str) -> int:
        """Index of one known item.

        Raises:
          InputError: the id is not in the vocabulary.
        """
        position = self._index.get_indexer([item_id])[0]
        if position <= OOV_INDEX:
            raise InputError(f"unknown item id {item_id!r} (not in the vocabulary of "
                             f"{self.size - 1} items)")
        return int(position)

    def to_frame(self) -> pd.DataFrame:
        names = np.asarray(self.market_names + [""], dtype=object)
        return pd.DataFrame({"item": self.ids, "count": self.counts,
                             "market": names[self.market], "text": self.text})

    def save(self, path: str | Path) -> None:
        """Writes a TSV (item, count, market, text), one row per index, OOV first."""
        self.to_frame().to_csv(path, sep="\t", index=False)

    @classmethod
    def load(cls, path: str | Path) -> "ItemVocabulary":
        try:
            frame = pd.read_csv(path, sep="\t", dtype={"item": str, "market": str, "text": str},
                                keep_default_na=False)
        except FileNotFoundError:
            raise InputError("vocabulary file not found", path=str(path)) from None
        markets = frame["market"].to_numpy(dtype=object)
        codes, names = pd.factorize(np.where(markets == "", None, markets))
        return cls(ids=frame["item"].to_numpy(dtype=object),
                   text=frame["text"].to_numpy(dtype=object),
                   market=codes.astype(np.int32), market_names=[str(n) for n in names],
                   counts=frame["count"].to_numpy(dtype=np.int64))


def build_vocabulary(events: pd.DataFrame, items: pd.DataFrame | None = None) -> ItemVocabulary:
    """Builds the vocabulary from the events and, if given, the items table.

    Every item of either table is kept: an item with text but no events is a
    cold-start item (count 0); an item with events but no row in the items
    table gets empty text.
    """
    counts = events["item"].value_counts(sort=False)
    frame = pd.DataFrame({"item": counts.index.to_numpy(dtype=object),
                          "count": counts.to_numpy(dtype=np.int64)})
    if items is not None:
        frame = frame.merge(items[["item", "text", "market"]], on="item", how="outer")
        frame["count"] = frame["count"].fillna(0).astype(np.int64)
    else:
        frame["text"] = ""
        frame["market"] = None
    frame["text"] = frame["text"].fillna("")
    frame = frame.sort_values(["count", "item"], ascending=[False, True], kind="stable")
    markets = frame["market"].to_numpy(dtype=object)
    markets = np.where(pd.isna(markets), None, markets)
    codes, names = pd.factorize(markets)
    return ItemVocabulary(
        ids=np.concatenate([[OOV_TOKEN], frame["item"].to_numpy(dtype=object)]),
        text=np.concatenate([[""], frame["text"].to_numpy(dtype=object)]),
        market=np.concatenate([[-1], codes]).astype(np.int32),
        market_names=[str(n) for n in names],
        counts=np.concatenate([[0], frame["count"].to_numpy(dtype=np.int64)]),
    )
