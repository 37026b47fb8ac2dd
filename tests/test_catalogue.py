"""`tfrec export --add-items / --drop-items`: next versions with a changed catalogue, no
training."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfrec.cli import main
from tfrec.errors import InputError
from tfrec.exporter import CatalogueUpdate, load_saved_model, update_catalogue
from tfrec.index import IndexConfig
from tfrec.run import load_run

NEW = ["new-a", "new-b", "new-c"]


def files_of(model_dir: Path) -> dict:
    return {str(p.relative_to(model_dir)): p.stat().st_mtime_ns
            for p in model_dir.rglob("*") if p.is_file()}


def embeddings_of(version_dir: Path):
    folder = version_dir / "assets.extra" / "embeddings"
    return np.array((folder / "item_ids.txt").read_text().split()), np.load(folder / "items.npy")


@pytest.fixture(scope="module")
def vocab(run_dir):
    return load_run(run_dir)[1]


@pytest.fixture(scope="module")
def versions(shared_versions, vocab, tmp_path_factory):
    """shop/1: a brute-force export (the shared run's); 2: three new items (texts of warm
    items of three clusters) added; 3: the most popular item, one other and new-b
    dropped."""
    from session_helpers import copy_export

    base = tmp_path_factory.mktemp("catalogue")
    first = copy_export(shared_versions, "brute_force", base / "shop")
    warm = [vocab.index_of(i) for i in ("i1", "i40", "i90")]
    items = base / "new.csv"
    items.write_text("item_id,text\n" + "".join(
        f"{n},\"{vocab.text[w]}\"\n" for n, w in zip(NEW, warm)))
    added = update_catalogue(base / "shop", CatalogueUpdate(add_items=items))
    popular = str(vocab.ids[np.argmax(vocab.counts[1:]) + 1])
    dropped = [popular, "i7", "new-b"]
    ids = base / "drop.txt"
    ids.write_text("\n".join(dropped) + "\n")
    after = update_catalogue(base / "shop", CatalogueUpdate(drop_items=ids))
    return base, first, added, after, dropped


def test_added_items_are_appended_and_known_items_keep_their_embeddings(versions, vocab):
    _, first, added, _, _ = versions
    ids1, vectors1 = embeddings_of(first.path)
    ids2, vectors2 = embeddings_of(added.path)
    assert ids2.tolist() == ids1.tolist() + NEW
    np.testing.assert_array_equal(vectors2[:len(ids1)], vectors1)
    # The text tower alone: what version 1's embed_items answers for an unknown id.
    texts = [vocab.text[vocab.index_of(i)] for i in ("i1", "i40", "i90")]
    old = load_saved_model(first.path).signatures["embed_items"](
        item_ids=tf.constant(NEW), texts=tf.constant(texts))
    assert not old["known"].numpy().any()
    np.testing.assert_allclose(vectors2[len(ids1):], old["embeddings"].numpy(), atol=1e-6)
    meta = added.metadata
    assert meta["index_kind"] == "brute_force" and meta["max_k"] == 20
    assert meta["items"] == first.metadata["items"] + len(NEW) == vocab.size - 1 + len(NEW)
    assert meta["catalogue_update"]["from_version"] == 1 and meta["added_items"] == 3
    assert meta["recall@10"] == 1.0 and meta["users_computed_at"] == \
        first.metadata["users_computed_at"]
    served = load_saved_model(added.path).signatures
    out = served["embed_items"](item_ids=tf.constant(NEW), texts=tf.constant(["", "", ""]))
    assert out["known"].numpy().all()
    np.testing.assert_allclose(out["embeddings"].numpy(), vectors2[len(ids1):], atol=1e-6)
    assert served["item_texts"](item_ids=tf.constant(NEW))["texts"].numpy().astype(
        str).tolist() == texts


def test_an_added_item_is_similar_to_its_nearest_warm_neighbours(versions, vocab):
    _, _, added, _, _ = versions
    ids, vectors = embeddings_of(added.path)
    served = load_saved_model(added.path).signatures["similar_items"]
    warm = np.flatnonzero(vocab.counts[vocab.lookup(ids)] > 0)
    for name in NEW:
        row = ids.tolist().index(name)
        scores = vectors @ vectors[row]
        scores[row] = -np.inf
        out = served(item_ids=tf.constant([name]), k=tf.constant(5))
        assert out["known"].numpy()[0]
        expected = ids[np.argsort(-scores)[:5]].tolist()
        assert out["item_ids"].numpy()[0].astype(str).tolist() == expected
        # Each warm item's top max_k is the brute-force one, the added item included where it
        # ranks; and the warm item that ranks the added item highest finds it at that rank.
        max_k = added.metadata["max_k"]
        ranks = []
        for w in warm:
            theirs = vectors @ vectors[w]
            theirs[w] = -np.inf
            ranks.append(int((theirs > theirs[row]).sum()) + 1)
        for w in warm[np.argsort(-scores[warm])[:3]]:
            theirs = vectors @ vectors[w]
            theirs[w] = -np.inf
            found = served(item_ids=tf.constant([ids[w]]), k=tf.constant(max_k))
            rows = [ids.tolist().index(i) for i in found["item_ids"].numpy()[0].astype(str)]
            np.testing.assert_allclose(theirs[rows], np.sort(theirs)[::-1][:max_k], atol=1e-5)
        best = warm[int(np.argmin(ranks))]
        rank = min(ranks)
        assert rank <= max_k, f"no warm item ranks {name} in its top {max_k}"
        found = served(item_ids=tf.constant([ids[best]]), k=tf.constant(rank))
        assert name in found["item_ids"].numpy()[0].astype(str).tolist()


def test_sessions_can_be_recommended_added_items_exactly(versions):
    _, _, added, _, _ = versions
    ids, vectors = embeddings_of(added.path)
    served = load_saved_model(added.path).signatures
    sessions = [["i1", "i2", "new-a"], ["i40", "i41", ""], ["i90", "new-c", ""]]
    out = served["serving_default"](item_ids=tf.constant(sessions), k=tf.constant(20))
    queries = served["embed_query"](item_ids=tf.constant(sessions))["embeddings"].numpy()
    scores = queries @ vectors.T
    for row, session in enumerate(sessions):
        scores[row, np.isin(ids, session)] = -np.inf
        expected = ids[np.argsort(-scores[row], kind="stable")[:20]]
        assert out["item_ids"].numpy()[row].astype(str).tolist() == expected.tolist()
    # Each added item is recommended to the one-item session that ranks it highest.
    warm = [i for i in ids if i not in NEW]
    queries = served["embed_query"](item_ids=tf.constant([[i] for i in warm]))[
        "embeddings"].numpy()
    scores = queries @ vectors.T
    scores[np.arange(len(warm)), [ids.tolist().index(i) for i in warm]] = -np.inf
    for name in NEW:
        column = ids.tolist().index(name)
        ranks = (scores > scores[:, [column]]).sum(axis=1)
        best = int(np.argmin(ranks))
        assert ranks[best] < 20, f"no one-item session ranks {name} in its top 20"
        out = served["serving_default"](item_ids=tf.constant([[warm[best]]]), k=tf.constant(20))
        assert name in out["item_ids"].numpy()[0].astype(str).tolist()


def test_a_dropped_item_never_comes_back(versions, vocab):
    _, _, _, after, dropped = versions
    ids, _ = embeddings_of(after.path)
    assert not set(dropped) & set(ids) and len(ids) == 155
    assert after.metadata["dropped_items"] == 2 and after.metadata["added_items"] == 2
    served = load_saved_model(after.path).signatures
    users = (after.path / "assets.extra" / "embeddings" / "user_ids.txt").read_text().split()
    seen = set()
    for start in range(0, len(users), 200):
        out = served["recommend_for_user"](user_ids=tf.constant(users[start:start + 200]),
                                           k=tf.constant(20))
        seen |= set(out["item_ids"].numpy().astype(str).ravel())
    out = served["recommend_for_user"](user_ids=tf.constant(["nobody"]), k=tf.constant(20))
    seen |= set(out["item_ids"].numpy().astype(str).ravel())
    everything = vocab.ids[1:].astype(str).tolist() + NEW + ["nope"]
    for start in range(0, len(everything), 50):
        batch = everything[start:start + 50]
        out = served["similar_items"](item_ids=tf.constant(batch), k=tf.constant(20))
        seen |= set(out["item_ids"].numpy().astype(str).ravel())
        out = served["serving_default"](item_ids=tf.constant([[i] for i in batch]),
                                        k=tf.constant(20))
        seen |= set(out["item_ids"].numpy().astype(str).ravel())
    out = served["serving_default"](item_ids=tf.constant([["nope"]]), k=tf.constant(20))
    assert out["fallback"].numpy()[0]
    popular = out["item_ids"].numpy().astype(str)[0].tolist()
    assert popular[0] == str(vocab.ids[np.argsort(-vocab.counts[1:], kind="stable")[1] + 1])
    seen |= set(popular)
    assert not set(dropped) & seen and "new-a" in seen
    out = served["similar_items"](item_ids=tf.constant(dropped), k=tf.constant(3))
    assert not out["known"].numpy().any()
    assert served["item_texts"](item_ids=tf.constant(dropped))["texts"].numpy().tolist() == \
        [b""] * 3


def test_a_dropped_vocabulary_item_comes_back_with_its_trained_embedding(
        versions, vocab, tmp_path):
    _, first, _, after, _ = versions
    items = tmp_path / "back.csv"
    items.write_text(f"item_id,text\ni7,\"{vocab.text[vocab.index_of('i7')]}\"\n")
    model_dir = tmp_path / "shop"
    model_dir.mkdir()
    (model_dir / "3").symlink_to(after.path)
    back = update_catalogue(model_dir, CatalogueUpdate(add_items=items))
    ids1, vectors1 = embeddings_of(first.path)
    ids, vectors = embeddings_of(back.path)
    assert ids[-1] == "i7" and back.metadata["catalogue_update"]["restored"] == 1
    np.testing.assert_allclose(vectors[-1], vectors1[ids1.tolist().index("i7")], atol=1e-6)
    assert back.metadata["dropped_items"] == 1  # the popular item is still out


def test_a_scann_update_rebuilds_and_checks_the_index(shared_versions, tmp_path, vocab):
    from session_helpers import copy_export

    first = copy_export(shared_versions, "scann", tmp_path / "shop")
    items = tmp_path / "new.tsv"
    items.write_text("item_id\ttext\n" + "".join(
        f"n{i}\t{vocab.text[i + 1]} new\n" for i in range(30)))
    result = update_catalogue(tmp_path / "shop", CatalogueUpdate(add_items=items),
                              index_settings={"recall_floor": 0.8})
    meta = result.metadata
    assert meta["index_kind"] == "scann" and meta["recall@10"] >= 0.8
    assert meta["items"] == first.metadata["items"] + 30 == vocab.size - 1 + 30
    assert meta["recall_floor"] == 0.8 and first.metadata["recall_floor"] == 0.9
    # The tree is sized for the new catalogue (sqrt(items) leaves), not inherited.
    assert meta["index_parameters"]["num_leaves"] == round(math.sqrt(meta["items"]))
    assert first.metadata["index_parameters"]["num_leaves"] == round(
        math.sqrt(first.metadata["items"]))
    assert meta["recall_queries"] == min(1000, first.metadata["users"])


def model_folder_of(version, tmp_path) -> Path:
    """A model folder of its own whose newest version is `version` (linked as 3)."""
    model_dir = tmp_path / "shop"
    model_dir.mkdir()
    (model_dir / "3").symlink_to(version.path)
    return model_dir


def test_command_line_add_and_drop(versions, tmp_path, capsys):
    base, _, _, after, _ = versions
    model_dir = model_folder_of(after, tmp_path)
    items = tmp_path / "more.csv"
    items.write_text("item_id,text,market\nnew-d,blue lamp,UK\nnew-a,x,UK\n")
    assert main(["-q", "export", "--model-dir", str(model_dir), "--add-items", str(items),
                 "--no-serving-config"]) == 2
    err = capsys.readouterr().err
    assert "new-a" in err and "another text" in err and "(--add-items)" in err
    items.write_text("item_id,text,market\nnew-d,blue lamp,UK\n")
    drop = tmp_path / "drop.txt"
    drop.write_text("new-c\n")
    assert main(["-q", "export", "--model-dir", str(model_dir), "--add-items", str(items),
                 "--drop-items", str(drop), "--from-version", "3", "--no-serving-config"]) == 0
    out = capsys.readouterr().out
    assert "exported version 4" in out and "1 items added, 1 dropped" in out
    ids, _ = embeddings_of(model_dir / "4")
    assert "new-d" in ids and "new-c" not in ids
    assert json.loads((model_dir / "4" / "assets.extra" / "tfrec_metadata.json").read_text()
                      )["index_kind"] == "brute_force"
    assert "not on the newest" not in out
    # Built on version 3 again: version 4's changes are not in version 5, and it says so.
    drop.write_text("i9\n")
    assert main(["-q", "export", "--model-dir", str(model_dir), "--drop-items", str(drop),
                 "--from-version", "3", "--no-serving-config"]) == 0
    out = capsys.readouterr().out
    assert "warning: built on version 3, not on the newest: what version 4 changed" in out
    meta = json.loads((model_dir / "5" / "assets.extra" / "tfrec_metadata.json").read_text())
    assert meta["versions_not_carried"]["from_version"] == 3
    assert meta["versions_not_carried"]["versions"] == [4]
    ids, _ = embeddings_of(model_dir / "5")
    assert "new-d" not in ids and "i9" not in ids
    # An id an earlier version dropped already: said so, beside one never there.
    drop.write_text("i9\nno-such-item\n")
    assert main(["-q", "export", "--model-dir", str(model_dir), "--drop-items", str(drop),
                 "--no-serving-config"]) == 2
    assert ("2 id(s) to drop are not in the catalogue (first: 'i9'); 1 of them trained items "
            "an earlier version dropped already (first: 'i9')") in capsys.readouterr().err
    assert not (model_dir / "6").exists()


def test_an_update_of_an_older_export_reads_its_index_key(versions, tmp_path):
    """Exports before `index_kind` recorded the kind as "index": the next version keeps it."""
    import shutil

    _, first, _, _, _ = versions
    model_dir = tmp_path / "shop"
    shutil.copytree(first.path, model_dir / "1")
    path = model_dir / "1" / "assets.extra" / "tfrec_metadata.json"
    meta = json.loads(path.read_text())
    meta["index"] = meta.pop("index_kind")
    path.write_text(json.dumps(meta))
    drop = tmp_path / "drop.txt"
    drop.write_text("i1\n")
    assert IndexConfig().kind != "brute_force"
    result = update_catalogue(model_dir, CatalogueUpdate(drop_items=drop))
    assert result.metadata["index_kind"] == "brute_force" and "index" not in result.metadata


@pytest.mark.parametrize("setup, message, flag", [
    ("item_id,name\nx1,lamp\n",
     "no column 'text' (columns are: item_id, name) (new items are embedded from their text)",
     "--add-items"),
    ("sku,text\nx1,lamp\n", "no column 'item_id' (columns are: sku, text): an --add-items "
                            "file has the run's items layout", "--add-items"),
    ("item_id,text\ni1,something else\n", "in the catalogue already with another text",
     "--add-items"),
    ("item_id,text\nx1,lamp\nx1,chair\n", "has text 'chair' here but 'lamp' at line 2", None),
    ("item_id,text\nx1,lamp\nx2,\n", "1 new item(s) have no text (first: 'x2' (line 3))",
     "--add-items"),
    ("drop:nope\n", "not in the catalogue (first: 'nope')", "--drop-items"),
    ("both", "both added and dropped", "--add-items"),
    ("drop:", "names no item id", "--drop-items"),
    ("missing", "items file not found", "--add-items"),
    ("version", "no version 9", "--from-version"),
    ("nothing", "give items to add or ids to drop", None),
    # An item already there with its text: the next version would be this one again.
    ("same", "nothing changes: every item given is in version 3 with the same text",
     "--add-items"),
])
def test_bad_input_is_refused_and_nothing_is_written(versions, vocab, tmp_path, capsys, setup,
                                                     message, flag):
    base, _, _, after, _ = versions
    model_dir = tmp_path / "shop"
    model_dir.mkdir()
    (model_dir / "3").symlink_to(after.path)
    items, drop = tmp_path / "items.csv", tmp_path / "drop.txt"
    args = []
    if setup.startswith("drop:"):
        drop.write_text(setup[5:])
        args = ["--drop-items", str(drop)]
    elif setup == "both":
        items.write_text("item_id,text\nzz,lamp\n")
        drop.write_text("zz\n")
        args = ["--add-items", str(items), "--drop-items", str(drop)]
    elif setup == "missing":
        args = ["--add-items", str(tmp_path / "absent.csv")]
    elif setup == "version":
        drop.write_text("i1\n")
        args = ["--drop-items", str(drop), "--from-version", "9"]
    elif setup == "same":
        items.write_text(f'item_id,text\n{NEW[0]},"{vocab.text[vocab.index_of("i1")]}"\n')
        args = ["--add-items", str(items)]
    elif setup != "nothing":
        items.write_text(setup)
        args = ["--add-items", str(items)]
    before = files_of(model_dir.resolve() / "3")
    if setup == "nothing":
        with pytest.raises(InputError, match=message):
            update_catalogue(model_dir, CatalogueUpdate())
    else:
        assert main(["-q", "export", "--model-dir", str(model_dir), "--no-serving-config",
                     *args]) == 2
        err = capsys.readouterr().err
        assert message in err and (flag is None or f"({flag})" in err), err
        assert "--set" not in err  # tfrec export takes no --set
    assert sorted(p.name for p in model_dir.iterdir()) == ["3"]
    assert files_of(model_dir.resolve() / "3") == before


def test_the_run_and_checkpoint_of_the_version_must_still_be_there(versions, tmp_path):
    import shutil

    _, first, _, _, _ = versions
    model_dir = tmp_path / "shop"
    shutil.copytree(first.path, model_dir / "1")
    drop = tmp_path / "drop.txt"
    drop.write_text("i1\n")
    path = model_dir / "1" / "assets.extra" / "tfrec_metadata.json"
    meta = json.loads(path.read_text())
    for change, message in (({"checkpoint": "elsewhere/ckpt-999"}, "no longer has"),
                            ({"run": str(tmp_path / "gone")}, "is not there; give export.run")):
        path.write_text(json.dumps({**meta, **change}))
        with pytest.raises(InputError, match=message) as err:
            update_catalogue(model_dir, CatalogueUpdate(drop_items=drop))
        assert err.value.key == "export.run"
        assert sorted(p.name for p in model_dir.iterdir()) == ["1"]


def test_an_export_from_the_run_names_the_changes_it_does_not_carry(
        versions, run_dir, tmp_path, capsys):
    from tfrec.exporter.saved_model import changes_not_carried

    _, _, _, after, _ = versions
    model_dir = tmp_path / "shop"
    model_dir.mkdir()
    (model_dir / "3").symlink_to(after.path)
    assert main(["-q", "export", "--run", str(run_dir), "--model-dir", str(model_dir),
                 "--index", "brute_force", "--no-serving-config"]) == 0
    out = capsys.readouterr().out
    changed = after.metadata
    assert changed["added_items"] > 0 and changed["dropped_items"] > 0
    assert (f"warning: version 3 serves {changed['added_items']} added items, "
            f"{changed['dropped_items']} dropped items, not carried here") in out
    meta = json.loads((model_dir / "4" / "assets.extra" / "tfrec_metadata.json").read_text())
    assert meta["changes_not_carried"] == {
        "version": 3, "added_items": changed["added_items"],
        "dropped_items": changed["dropped_items"], "users_refreshed": False}
    assert meta["added_items"] == meta["dropped_items"] == 0
    # Version 4 changed nothing: the next export from the run has nothing to name.
    assert changes_not_carried(model_dir, 5) is None


def test_drop_ids_files_from_editors_read_alike(tmp_path):
    from tfrec.exporter.catalogue import read_drop_ids

    for name, data in (("bom.txt", b"\xef\xbb\xbfi3\r\n# old\r\ni4\r\n"),
                       ("plain.txt", b"i3\ni4\ni3\n")):
        (tmp_path / name).write_bytes(data)
        assert read_drop_ids(tmp_path / name) == ["i3", "i4"]
    # A comment is "#" then a space (or nothing): an id that starts with "#" is an id.
    (tmp_path / "hash.txt").write_bytes(b"#\n# note\n#\ttab\n#42\ni3\n")
    assert read_drop_ids(tmp_path / "hash.txt") == ["#42", "i3"]
    # An earlier release's id holding U+0085 or U+2028 is one id; old Mac line ends split.
    (tmp_path / "odd.txt").write_bytes("it\x85em\r\ni\u2028j\ri4".encode())
    assert read_drop_ids(tmp_path / "odd.txt") == ["it\x85em", "i\u2028j", "i4"]
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1.txt.*not UTF-8 text"):
        read_drop_ids(tmp_path / "latin1.txt")


def test_id_lists_split_at_newlines_only_and_a_short_user_list_is_refused(tmp_path):
    # A user id of an earlier release holding U+2028 (str.splitlines splits there): read
    # back as one id, not two (every later user was served the next one's embedding).
    from tfrec.exporter.layout import VersionFolder
    from tfrec.exporter.update import read_users
    from tfrec.utils import read_id_lines

    folder = VersionFolder(tmp_path)
    folder.user_ids.parent.mkdir(parents=True, exist_ok=True)
    folder.user_ids.write_text("u\u2028x\nu\x85y\nz\n", encoding="utf-8")
    assert read_id_lines(folder.user_ids) == ["u\u2028x", "u\x85y", "z"]
    np.save(folder.users, np.zeros((3, 4), np.float32))
    np.save(folder.user_histories, np.zeros((3, 5), np.int32))
    assert read_users(tmp_path, 4, 5).ids.tolist() == ["u\u2028x", "u\x85y", "z"]
    np.save(folder.users, np.zeros((2, 4), np.float32))
    with pytest.raises(InputError, match="lists 3 users but users.npy has 2 rows"):
        read_users(tmp_path, 4, 5)


def test_a_job_starts_from_the_newest_complete_version(tmp_path):
    from tfrec.exporter.layout import ALL_USERS_READS, ModelFolder

    def version(number, skip=()):
        root = tmp_path / "shop" / str(number)
        for name in ("saved_model.pb", "variables/variables.index",
                     "variables/variables.data-00000-of-00001",
                     "assets.extra/tfrec_metadata.json", "assets.extra/embeddings/items.npy",
                     "assets.extra/embeddings/item_ids.txt", "assets.extra/embeddings/users.npy",
                     "assets.extra/embeddings/user_ids.txt",
                     "assets.extra/embeddings/user_histories.npy"):
            if name not in skip:
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_text("x")

    version(1)
    version(2, skip=("variables/variables.index",))  # being copied in
    version(3, skip=("assets.extra/embeddings/user_histories.npy",))  # half its users
    folder = ModelFolder(tmp_path / "shop")
    assert folder.source_version(None, "export.from_version").path.name == "1"
    with pytest.raises(InputError, match="version 3 is not complete: it lacks "
                                         "assets.extra/embeddings/user_histories.npy"):
        folder.source_version(3, "export.from_version")
    # Every user's list reads no catalogue or user embeddings: version 3 will do.
    assert folder.source_version(None, "recommend.version", ALL_USERS_READS).path.name == "3"
    # An export older than cached users (none of their files) is complete.
    version(4, skip=("assets.extra/embeddings/users.npy", "assets.extra/embeddings/user_ids.txt",
                     "assets.extra/embeddings/user_histories.npy"))
    assert folder.source_version(None, "export.from_version").path.name == "4"
    for number in (1, 4):
        shutil.rmtree(tmp_path / "shop" / str(number))
    with pytest.raises(InputError, match="no complete version"):
        folder.source_version(None, "export.from_version")


def test_evaluating_a_version_with_a_changed_catalogue_names_the_change(versions, run_dir,
                                                                        capsys):
    """The evaluation scores the run's catalogue: a version with added or dropped items is
    refused, saying so (it blamed another run)."""
    _, _, added, after, _ = versions
    for version, counts in ((added, "3 items added and 0 dropped"),
                            (after, "2 items added and 2 dropped")):
        assert main(["-q", "evaluate", "--run", str(run_dir), "--saved-model",
                     str(version.path), "--baselines", "popularity", "--no-ablations"]) == 2
        err = capsys.readouterr().err
        assert f"the version's catalogue is not the run's: {counts} since training" in err
        assert "another run" not in err
