"""The catalogue of an exported version: the items its index serves, apart from the model.

A full export's catalogue is the model's vocabulary. `tfrec export --add-items
/ --drop-items` derives the next version's catalogue from the previous one's
files, without retraining: the embeddings of the index rows ([items, dim] float32,
index row order), their ids, and the id and text of the rows the model's
vocabulary lacks (added items); `tfrec.exporter.layout.VersionFolder` names them.

Rules: an added id that is new is embedded from its text by the text tower
alone (what `embed_items` returns for an unknown id); an id the catalogue
already holds with the same text is left as it is (adding a file twice
changes nothing); with a different text it is an error (a known item keeps
its embedding: change an added item's text by dropping it in one version and
adding it in the next; a trained item's text changes by retraining). An id of
the model's vocabulary that an earlier version dropped comes back with its
trained embedding (and must come with its trained text). A dropped id must be
in the catalogue.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pandas as pd

from tfrec.errors import InputError
from tfrec.exporter.layout import VersionFolder
from tfrec.utils import read_id_lines


@dataclasses.dataclass
class Catalogue:
    """The items an exported version can recommend: the rows of its index.

    Attributes:
      ids: [items] item ids (str), in index row order.
      embeddings: [items, dim] float32 (None: not needed, every id is in the
        model's vocabulary).
      texts: [items] item texts ("" where none is known).
      counts: [items] training events per item (0 for cold and added items).
    """

    ids: np.ndarray
    embeddings: np.ndarray | None
    texts: np.ndarray
    counts: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_vocabulary(cls, vocab, embeddings: np.ndarray) -> "Catalogue":
        """Every vocabulary item; `embeddings` [vocabulary, dim] with the OOV row first."""
        return cls(np.asarray(vocab.ids[1:]).astype(str), np.asarray(embeddings[1:], np.float32),
                   np.asarray(vocab.text[1:], dtype=object), np.asarray(vocab.counts[1:]))

    @classmethod
    def read(cls, version_dir: str | Path, vocab) -> "Catalogue":
        """The catalogue of an exported version; texts and counts of vocabulary items come
        from `vocab` (the run's), those of added items from the version's added-items file.

        Raises:
          InputError: a file is missing or the files disagree.
        """
        folder = VersionFolder(version_dir)
        for path in (folder.items, folder.item_ids):
            if not path.exists():
                raise InputError(f"the version has no catalogue file {path.name}",
                                 path=str(path))
        ids = np.array(read_id_lines(folder.item_ids), dtype=object)
        # Mapped, not read: the next catalogue copies the rows it keeps once.
        embeddings = np.load(folder.items, mmap_mode="r")
        if len(embeddings) != len(ids):
            raise InputError(f"{folder.items.name} has {len(embeddings):,} rows but "
                             f"{folder.item_ids.name} {len(ids):,} ids",
                             path=str(folder.embeddings))
        added = (pd.read_csv(folder.added_items, dtype=str, keep_default_na=False)
                 if folder.added_items.exists()
                 else pd.DataFrame({"item_id": [], "text": []}))
        position = vocab.lookup(ids)
        texts = np.asarray(vocab.text, dtype=object)[position]
        counts = np.asarray(vocab.counts)[position]
        counts[position == 0] = 0
        unknown = np.flatnonzero(position == 0)
        if len(unknown):
            by_id = dict(zip(added["item_id"], added["text"]))
            missing = [ids[i] for i in unknown if ids[i] not in by_id]
            if missing:
                raise InputError(f"{len(missing):,} catalogue ids are neither in the run's "
                                 f"vocabulary nor in {folder.added_items.name} (first: "
                                 f"{missing[0]!r}); was the version exported from another "
                                 "run?", path=str(folder.embeddings))
            texts[unknown] = [by_id[ids[i]] for i in unknown]
        return cls(ids.astype(str), embeddings, texts, counts)

    def write(self, folder: VersionFolder, vocab_ids) -> None:
        """The catalogue's files in `folder`: the embeddings, the ids and the added rows
        (those `vocab_ids` lacks) with their texts."""
        folder.embeddings.mkdir(parents=True, exist_ok=True)
        np.save(folder.items, np.asarray(self.embeddings, np.float32))
        folder.item_ids.write_text("".join(f"{i}\n" for i in self.ids), encoding="utf-8")
        added = pd.Index(np.asarray(vocab_ids).astype(str)).get_indexer(self.ids) < 0
        pd.DataFrame({"item_id": self.ids[added], "text": self.texts[added]}).to_csv(
            folder.added_items, index=False)


def read_new_items(path: str | Path, schema) -> pd.DataFrame:
    """The items file of --add-items: the training items layout (`schema`: id, text,
    optional market columns), CSV or Parquet.

    Returns:
      items: columns item, text, one row per id, in file order.

    Raises:
      InputError: a missing file or column, an empty id, or one id twice with two texts.
    """
    from tfrec.data.events import read_items

    path = Path(path)
    if not path.exists():
        raise InputError("items file not found", path=str(path), key="export.add_items")
    try:
        items, _ = read_items(path, schema, strict=True)
    except InputError as err:
        if not err.reason.startswith("no column"):
            raise
        if schema.market_col is not None and err.column == schema.market_col:
            # New items need no market: without the column, they are read without one.
            return read_new_items(path, dataclasses.replace(schema, market_col=None))
        columns = err.reason.split("(columns are: ", 1)[-1].split(")", 1)[0]
        why = (" (new items are embedded from their text)" if err.column == schema.text_col
               else "")
        raise InputError(
            f"no column '{err.column}' (columns are: {columns}){why}: an --add-items file "
            f"has the run's items layout, the item id in '{schema.item_col}' and the text in "
            f"'{schema.text_col}' (the run config's data.items_schema); name its columns so",
            path=str(path), key="export.add_items") from None
    return items[["item", "text", "line"]].reset_index(drop=True)


def read_drop_ids(path: str | Path) -> list[str]:
    """The ids file of --drop-items: one item id per line, UTF-8 (blank lines and comment
    lines, "#" then a space or nothing, skipped: an id such as "#42" is an id; a
    byte-order mark and Windows line ends are fine).

    Raises:
      InputError: a missing or empty file, or one that is not UTF-8.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("item ids file not found", path=str(path), key="export.drop_items")
    try:  # UTF-8, with or without the byte-order mark an editor may write first
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"not UTF-8 text ({err.reason} at byte {err.start})", path=str(path),
                         key="export.drop_items") from None
    # Split at \r\n, \r and \n alone, not at every separator str.splitlines knows: an id
    # of an earlier release's export may hold U+0085 or U+2028, and is dropped whole.
    ids = [line.strip() for line in re.split(r"\r\n|\r|\n", text)]
    ids = list(dict.fromkeys(i for i in ids if i and not _comment(i)))
    if not ids:
        raise InputError("the file names no item id", path=str(path), key="export.drop_items")
    return ids


def _comment(line: str) -> bool:
    """A --drop-items line that is a comment: "#" alone or followed by whitespace."""
    return line == "#" or (line.startswith("#") and line[1].isspace())


@dataclasses.dataclass
class CatalogueChange:
    """What `next_catalogue` did. added: new rows; restored: vocabulary items back after
    an earlier drop; unchanged: ids already there with the same text; dropped: rows removed."""

    added: list[str]
    restored: list[str]
    unchanged: list[str]
    dropped: list[str]


def next_catalogue(previous: Catalogue, vocab, new_items: pd.DataFrame | None = None,
                   drop_ids: list[str] = (), embed=None, items_path: str | None = None,
                   drop_path: str | None = None) -> tuple[Catalogue, CatalogueChange]:
    """The catalogue with `drop_ids` removed and `new_items` (item, text) appended.

    Args:
      previous: the catalogue to start from.
      vocab: the model's item vocabulary (`ItemVocabulary`).
      new_items: items to add, columns item and text.
      drop_ids: ids to remove (every one must be in `previous`).
      embed: (ids [n], texts [n]) -> [n, dim] float32, the embeddings of
        items (the model's for a vocabulary id, the text tower's otherwise).
      items_path, drop_path: the files, for the messages.

    Raises:
      InputError: a dropped id not in the catalogue, an id both added and
        dropped, a known id with a different text, or nothing left.
    """
    ids = np.asarray(previous.ids).astype(str)
    rows = pd.Index(ids)
    drop_ids = [str(i) for i in drop_ids]
    new_items = (new_items if new_items is not None
                 else pd.DataFrame({"item": [], "text": []}))
    new_ids = new_items["item"].astype(str).to_numpy()
    both = sorted(set(drop_ids) & set(new_ids))
    if both:
        raise InputError(f"{len(both):,} id(s) are both added and dropped (first: "
                         f"{both[0]!r}); give each id once", path=items_path,
                         key="export.add_items")
    if drop_ids:
        unknown = [i for i, p in zip(drop_ids, rows.get_indexer(drop_ids)) if p < 0]
        if unknown:
            # A trained item dropped by an earlier version is in the vocabulary still.
            earlier = [i for i, v in zip(unknown, vocab.lookup(unknown)) if v > 0]
            note = (f"; {len(earlier):,} of them trained items an earlier version dropped "
                    f"already (first: {earlier[0]!r})" if earlier else "")
            hashed = [i for i in unknown if i.startswith("#")]
            if hashed:
                note += (f"; {hashed[0]!r} starts with '#' but is not a comment: a comment "
                         "line is '#' then a space")
            raise InputError(f"{len(unknown):,} id(s) to drop are not in the catalogue "
                             f"(first: {unknown[0]!r}){note}", path=drop_path,
                             key="export.drop_items")
    position = rows.get_indexer(new_ids)
    present = position >= 0
    texts = new_items["text"].fillna("").astype(str).to_numpy()
    changed = present & (np.asarray(previous.texts, dtype=object)[np.maximum(position, 0)]
                         .astype(str) != texts)
    if changed.any():
        i = int(np.flatnonzero(changed)[0])
        raise InputError(
            f"{int(changed.sum()):,} id(s) are in the catalogue already with another text "
            f"(first: {new_ids[i]!r}: {texts[i]!r}, was {previous.texts[position[i]]!r}); "
            "a known item keeps its embedding (an added item can be dropped in one version "
            "and added with its new text in the next; a trained item's text changes by "
            "retraining)", path=items_path, key="export.add_items")
    restored = ~present & (vocab.lookup(new_ids) > 0)
    vocab_texts = np.asarray(vocab.text, dtype=object)[vocab.lookup(new_ids)].astype(str)
    renamed = restored & (vocab_texts != texts)
    if renamed.any():
        i = int(np.flatnonzero(renamed)[0])
        raise InputError(
            f"{int(renamed.sum()):,} id(s) were trained with another text (first: "
            f"{new_ids[i]!r}: {texts[i]!r}, trained as {vocab_texts[i]!r}); an item the model "
            "knows comes back with its trained embedding and text", path=items_path,
            key="export.add_items")
    keep = np.ones(len(ids), dtype=bool)
    if drop_ids:
        keep[rows.get_indexer(drop_ids)] = False
    if not keep.any() and not (~present).any():
        raise InputError("dropping these ids leaves an empty catalogue", path=drop_path,
                         key="export.drop_items")
    fresh = ~present
    fresh_ids, fresh_texts = new_ids[fresh], texts[fresh]
    in_vocab = vocab.lookup(fresh_ids) > 0
    blank = ~in_vocab & (np.char.strip(fresh_texts.astype(str)) == "")
    if blank.any():
        i = int(np.flatnonzero(blank)[0])
        line = (f" (line {int(new_items['line'].to_numpy()[fresh][i])})"
                if "line" in new_items else "")
        raise InputError(f"{int(blank.sum()):,} new item(s) have no text (first: "
                         f"{fresh_ids[i]!r}{line}): a new item is embedded from its text",
                         path=items_path, key="export.add_items")
    if len(fresh_ids) and embed is None:
        raise ValueError("new items need an embed function")
    fresh_embeddings = (embed(fresh_ids, fresh_texts) if len(fresh_ids)
                        else np.zeros((0, previous.embeddings.shape[1]), np.float32))
    counts = np.where(in_vocab, np.asarray(vocab.counts)[vocab.lookup(fresh_ids)], 0)
    # One copy of the kept rows (the previous ones may be a memory map of the items file).
    kept = previous.embeddings if keep.all() else np.asarray(previous.embeddings)[keep]
    catalogue = Catalogue(
        np.concatenate([ids[keep], fresh_ids]).astype(str),
        np.concatenate([kept, np.asarray(fresh_embeddings, np.float32)]).astype(
            np.float32, copy=False),
        np.concatenate([np.asarray(previous.texts, dtype=object)[keep],
                        fresh_texts.astype(object)]),
        np.concatenate([np.asarray(previous.counts)[keep], counts]))
    change = CatalogueChange(added=fresh_ids[~in_vocab].tolist(),
                             restored=fresh_ids[in_vocab].tolist(),
                             unchanged=new_ids[present].tolist(), dropped=drop_ids)
    return catalogue, change
