"""`tfrec recommend --all-users`: every known user's top-k streamed to Parquet."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from tfrec import all_users
from tfrec.cli import main
from tfrec.errors import InputError
from tfrec.progress import ProgressLine

ITEMS, USERS, DIM, MAX_K = 40, 57, 8, 20


class StandIn(tf.Module):
    """A tiny SavedModel with the export's `recommend_for_user` signature: exact top-k
    over generated embeddings, each user's own items excluded, unknown users the most
    popular items with known false."""

    def __init__(self, seed: int = 42):
        super().__init__()
        rng = np.random.RandomState(seed)
        self.user_ids = np.array([f"u{i}" for i in range(USERS)])
        self.item_ids = np.array([f"i{i}" for i in range(ITEMS)])
        self.users = rng.normal(size=(USERS, DIM)).astype(np.float32)
        self.items = rng.normal(size=(ITEMS, DIM)).astype(np.float32)
        self.own = rng.rand(USERS, ITEMS) < 0.1
        self.table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(self.user_ids), tf.range(USERS)), default_value=-1)
        self.user_var = tf.Variable(self.users)
        self.own_var = tf.Variable(self.own)
        self.item_var = tf.Variable(self.items)
        self.ids = tf.constant(self.item_ids)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_ids"),
                                  tf.TensorSpec([], tf.int32, name="k")])
    def recommend_for_user(self, user_ids, k):
        tf.debugging.assert_less_equal(k, MAX_K, message=f"k must be at most {MAX_K}")
        row = self.table.lookup(user_ids)
        known = row >= 0
        safe = tf.maximum(row, 0)
        scores = tf.matmul(tf.gather(self.user_var, safe), self.item_var, transpose_b=True)
        scores = tf.where(tf.gather(self.own_var, safe), float("-inf"), scores)
        top, at = tf.math.top_k(scores, k)
        ids = tf.where(tf.math.is_inf(top), "", tf.gather(self.ids, at))
        popular = tf.broadcast_to(self.ids[None, :k], tf.shape(ids))
        return {"item_ids": tf.where(known[:, None], ids, popular),
                "scores": tf.where(known[:, None], top, tf.zeros_like(top)), "known": known}

    def expected(self, k: int) -> dict:
        """user -> [(item, score)] by numpy."""
        scores = np.where(self.own, -np.inf, self.users @ self.items.T)
        out = {}
        for u, row in zip(self.user_ids, scores):
            order = np.argsort(-row, kind="stable")[:k]
            out[u] = [(self.item_ids[i], row[i]) for i in order if np.isfinite(row[i])]
        return out


def save_stand_in(model_dir: Path, version: int = 1, users: list[str] | None = None,
                  max_k: int = MAX_K) -> StandIn:
    module = StandIn()
    path = model_dir / str(version)
    tf.saved_model.save(module, str(path),
                        signatures={"recommend_for_user": module.recommend_for_user})
    extra = path / "assets.extra"
    (extra / "embeddings").mkdir(parents=True)
    (extra / "tfrec_metadata.json").write_text(json.dumps({"max_k": max_k}))
    listed = list(module.user_ids) if users is None else users
    (extra / "embeddings" / "user_ids.txt").write_text("".join(f"{u}\n" for u in listed))
    return module


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    base = tmp_path_factory.mktemp("standin") / "shop"
    module = save_stand_in(base, 1)
    save_stand_in(base, 3, users=["u1", "ghost", "u2"])  # the newest: one unknown user
    return base, module


def rows_by_user(path: Path) -> dict:
    table = pq.read_table(path).to_pydict()
    out: dict = {}
    for u, rank, item, score in zip(table["user_id"], table["rank"], table["item_id"],
                                    table["score"]):
        out.setdefault(u, []).append((rank, item, score))
    return out


class TestStandIn:
    def test_every_user_ranked_and_exact(self, stand_in, tmp_path):
        base, module = stand_in
        summary = all_users.recommend_all_users(base, tmp_path / "recs.parquet", k=10, version=1,
                                                batch_size=10, progress=False)
        assert (summary.users, summary.k, summary.fallback_users) == (USERS, 10, 0)
        assert summary.version_dir == base / "1"
        got = rows_by_user(summary.path)
        expected = module.expected(10)
        assert list(got) == list(module.user_ids)  # every user, in file order
        assert summary.rows == sum(len(v) for v in expected.values())
        for user, rows in got.items():
            assert [r for r, _, _ in rows] == list(range(1, len(rows) + 1))
            assert [i for _, i, _ in rows] == [i for i, _ in expected[user]]
            np.testing.assert_allclose([s for _, _, s in rows],
                                       [s for _, s in expected[user]], rtol=1e-5)
        # One row group per chunk of 10 users.
        meta = pq.ParquetFile(summary.path).metadata
        assert meta.num_row_groups == summary.row_groups == 6
        assert pq.read_schema(summary.path).equals(all_users.SCHEMA, check_metadata=False)

    def test_own_items_excluded_and_short_lists(self, stand_in, tmp_path):
        base, module = stand_in
        summary = all_users.recommend_all_users(base, tmp_path / "r.parquet", k=MAX_K, version=1,
                                                progress=False)
        got = rows_by_user(summary.path)
        index = {item: i for i, item in enumerate(module.item_ids)}
        for u, user in enumerate(module.user_ids):
            assert not any(module.own[u, index[i]] for _, i, _ in got[user])
            assert len(got[user]) == min(MAX_K, ITEMS - module.own[u].sum())

    def test_newest_version_by_default_and_unknown_users_counted(self, stand_in, tmp_path):
        base, _ = stand_in
        summary = all_users.recommend_all_users(base, tmp_path / "r.parquet", k=3, progress=False)
        assert summary.version_dir == base / "3"
        assert (summary.users, summary.fallback_users, summary.rows) == (3, 1, 9)
        assert list(rows_by_user(summary.path)) == ["u1", "ghost", "u2"]

    def test_a_users_file_names_whom_to_recommend_for(self, stand_in, tmp_path, capsys):
        base, module = stand_in
        listed = tmp_path / "users.txt"
        # A byte-order mark and Windows line ends, as a file saved by Windows tools.
        listed.write_text(f"\ufeff {module.user_ids[4]}\r\n\r\n{module.user_ids[0]}\r\n"
                          f"ghost\r\n{module.user_ids[4]}\r\n", newline="")
        seen = []
        summary = all_users.recommend_all_users(base, tmp_path / "r.parquet", k=4, version=1,
                                                users=listed,
                                                progress=lambda d, t: seen.append((d, t)))
        assert seen == [(3, 3)]  # the distinct ids, as the job takes them
        got = rows_by_user(summary.path)
        # In file order, stripped, each once; an unknown id gets the popular items.
        assert list(got) == [module.user_ids[4], module.user_ids[0], "ghost"]
        assert (summary.users, summary.fallback_users, summary.uncached_users) == (3, 1, 0)
        expected = module.expected(4)
        for user in module.user_ids[4], module.user_ids[0]:
            assert [i for _, i, _ in got[user]] == [i for i, _ in expected[user]]
        # The same through the command line, which a Beam runner needed before.
        out = tmp_path / "cli.parquet"
        assert main(["-q", "recommend", "--all-users", "--model-dir", str(base), "--version",
                     "1", "-k", "4", "--users", str(listed), "--out", str(out)]) == 0
        assert pq.read_table(out).equals(pq.read_table(summary.path))
        assert "3 users x top 4" in capsys.readouterr().out
        # A missing file, a folder, and bytes that are not text are named; nothing written.
        (tmp_path / "binary.txt").write_bytes(b"u1\n\xff\xfe\n")
        for path, message in ((tmp_path / "none.txt", "no such users file"),
                              (tmp_path, "the users file is a folder"),
                              (tmp_path / "binary.txt", "line 2 is not UTF-8")):
            with pytest.raises(InputError, match=message) as err:
                all_users.recommend_all_users(base, tmp_path / "bad.parquet", k=4,
                                              users=path, progress=False)
            assert err.value.key == "recommend.users"
            assert not (tmp_path / "bad.parquet").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad.parquet")]

    def test_recommend_batch_matches_the_job(self, stand_in, tmp_path):
        base, _ = stand_in
        signature = all_users.load_user_recommender(base / "1")
        chunks = list(all_users.user_id_batches(base / "1", 25))
        assert [len(c) for c in chunks] == [25, 25, 7]
        assert all_users.count_users(base / "1") == USERS
        table = all_users.recommend_batch(signature, chunks[1], 5)
        whole = pq.read_table(all_users.recommend_all_users(
            base, tmp_path / "r.parquet", k=5, version=1, progress=False).path)
        assert table.replace_schema_metadata(None).equals(whole.slice(125, 125))
        assert all_users.recommend_batch(signature, [], 5).num_rows == 0
        # A lone string (whose characters would each be a user), an id that is not a
        # string and a k that is not an integer are refused before the signature runs.
        for users, k, message in (("u1", 5, "user_ids must be a list of ids"),
                                  ([752, 3], 5, r"user_ids\[0\] must be an id string"),
                                  (["u1"], 2.5, "k must be an integer")):
            with pytest.raises(ValueError, match=message):
                all_users.recommend_batch(signature, users, k)

    def test_progress_callback_and_line(self, stand_in, tmp_path):
        import io

        base, _ = stand_in
        seen = []
        all_users.recommend_all_users(base, tmp_path / "r.parquet", k=2, version=1,
                                      batch_size=20, progress=lambda d, t: seen.append((d, t)))
        assert seen == [(20, USERS), (40, USERS), (USERS, USERS)]
        stream = io.StringIO()
        line = ProgressLine(100, "users", stream=stream)
        line(10, 100)  # not a terminal: at most a line every 30 s
        line(50, 100)
        line.finish(100)
        assert stream.getvalue().startswith("100/100 users (100%)")
        assert stream.getvalue().count("\n") == 1


class TestBadInput:
    def test_k_above_max_k_and_under_one(self, stand_in, tmp_path):
        base, _ = stand_in
        for k in (MAX_K + 1, 0):
            with pytest.raises(InputError, match=rf"k must be between 1 and {MAX_K}") as err:
                all_users.recommend_all_users(base, tmp_path / "r.parquet", k=k, progress=False)
            assert err.value.key == "recommend.k"
        assert list(tmp_path.iterdir()) == []

    def test_output_exists(self, stand_in, tmp_path):
        base, _ = stand_in
        out = tmp_path / "recs.parquet"
        out.write_text("earlier output")
        with pytest.raises(InputError, match="the output exists") as err:
            all_users.recommend_all_users(base, out, k=2, progress=False)
        assert err.value.key == "recommend.out" and err.value.path == str(out)
        assert out.read_text() == "earlier output"
        summary = all_users.recommend_all_users(base, out, k=2, progress=False, overwrite=True)
        assert summary.rows == 6 and pq.read_table(out).num_rows == 6
        with pytest.raises(InputError, match="is a folder"):
            all_users.recommend_all_users(base, tmp_path, k=2, progress=False, overwrite=True)

    def test_model_dir_and_versions(self, stand_in, tmp_path):
        base, _ = stand_in
        out = tmp_path / "r.parquet"
        with pytest.raises(InputError, match="no such model folder") as err:
            all_users.recommend_all_users(tmp_path / "nope", out, k=2)
        assert err.value.key == "recommend.model_dir"
        (tmp_path / "empty").mkdir()
        with pytest.raises(InputError, match="no exported versions"):
            all_users.recommend_all_users(tmp_path / "empty", out, k=2)
        with pytest.raises(InputError, match="version 2 does not exist; versions here: 1, 3"
                           ) as err:
            all_users.recommend_all_users(base, out, k=2, version=2)
        assert err.value.key == "recommend.version"
        assert not out.exists()

    def test_export_without_the_signature(self, tmp_path):
        module = tf.Module()
        module.f = tf.function(lambda x: {"y": x},
                               input_signature=[tf.TensorSpec([None], tf.string)])
        tf.saved_model.save(module, str(tmp_path / "old" / "1"),
                            signatures={"serving_default": module.f})
        extra = tmp_path / "old" / "1" / "assets.extra" / "embeddings"
        extra.mkdir(parents=True)
        (extra.parent / "tfrec_metadata.json").write_text('{"max_k": 10}')
        (extra / "user_ids.txt").write_text("u1\n")
        with pytest.raises(InputError, match="no recommend_for_user signature"):
            all_users.recommend_all_users(tmp_path / "old", tmp_path / "r.parquet", k=2,
                                          progress=False)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]

    def test_failure_mid_job_leaves_nothing(self, stand_in, tmp_path, monkeypatch):
        base, _ = stand_in
        out = tmp_path / "recs.parquet"
        out.write_text("earlier output")
        calls = []
        real = all_users.recommend_batch

        def failing(signature, user_ids, k):
            calls.append(len(user_ids))
            if len(calls) == 3:
                raise KeyboardInterrupt
            return real(signature, user_ids, k)

        monkeypatch.setattr(all_users, "recommend_batch", failing)
        with pytest.raises(KeyboardInterrupt):
            all_users.recommend_all_users(base, out, k=2, version=1, batch_size=10,
                                          progress=False, overwrite=True)
        assert calls == [10, 10, 10]
        assert [p.name for p in tmp_path.iterdir()] == ["recs.parquet"]
        assert out.read_text() == "earlier output"  # the earlier output stays as it was

    def test_terminated_process_leaves_nothing(self, stand_in, tmp_path):
        """A job stopped by SIGTERM removes its temporary; one killed outright leaves it,
        and the next job in the folder removes it."""
        base, _ = stand_in
        out = tmp_path / "recs.parquet"
        script = textwrap.dedent(f"""
            import sys, time
            import tfrec
            from tfrec import all_users
            real = all_users.recommend_batch
            def slow(*args):
                print("chunk", flush=True)
                time.sleep(0.5)
                return real(*args)
            all_users.recommend_batch = slow
            all_users.recommend_all_users({str(base)!r}, {str(out)!r}, k=2, version=1,
                                      batch_size=5, progress=False)
        """)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True)
            assert proc.stdout.readline() == "chunk\n"
            proc.stdout.readline()
            proc.send_signal(sig)
            proc.wait(60)
            left = [p.name for p in tmp_path.iterdir()]
            if sig == signal.SIGTERM:
                assert left == []
            else:
                assert len(left) == 1 and re.fullmatch(
                    rf"\.recs\.parquet{re.escape(all_users.TMP_MARK)}[0-9a-f]{{12}}-{proc.pid}",
                    left[0]), left
        # A job of another --out (dated names differ each day) leaves it while it may be a
        # live job's on another machine sharing the folder, and removes it a day on.
        left = tmp_path / left[0]
        all_users.recommend_all_users(base, tmp_path / "recs-2.parquet", k=2, version=1,
                                      progress=False)
        assert left.exists()
        os.utime(left, (time.time() - all_users.STALE_SECONDS - 60,) * 2)
        all_users.recommend_all_users(base, tmp_path / "recs-3.parquet", k=2, version=1,
                                      progress=False)
        assert not left.exists()
        # The next job of the same --out removes it at once.
        left.write_bytes(b"partial")
        all_users.recommend_all_users(base, out, k=2, version=1, progress=False)
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "recs-2.parquet", "recs-3.parquet", "recs.parquet"]


class TestCommand:
    def test_all_users(self, stand_in, tmp_path, capsys):
        base, _ = stand_in
        out = tmp_path / "recs.parquet"
        assert main(["recommend", "--all-users", "--model-dir", str(base), "--version", "1",
                     "-k", "4", "--out", str(out)]) == 0
        printed = capsys.readouterr()
        assert f"{USERS} users" in printed.out.replace(",", "") and str(out) in printed.out
        assert f"{USERS}/{USERS} users (100%)" in printed.err
        assert pq.read_table(out).num_rows == USERS * 4
        assert main(["-q", "recommend", "--all-users", "--model-dir", str(base), "-k", "4",
                     "--out", str(out), "--overwrite"]) == 0
        assert "users (100%)" not in capsys.readouterr().err

    def test_errors_name_the_flags(self, stand_in, tmp_path, capsys):
        base, _ = stand_in
        out = tmp_path / "recs.parquet"
        args = ["recommend", "--all-users", "--model-dir", str(base), "--out", str(out)]
        assert main(args + ["-k", "21"]) == 2
        assert "setting 'recommend.k' (-k)" in capsys.readouterr().err
        assert main(args + ["--version", "7"]) == 2
        assert "version 7 does not exist" in capsys.readouterr().err
        out.write_text("x")
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "the output exists" in err and "--overwrite" in err

    def test_modes_are_exclusive_and_all_users_needs_its_flags(self, stand_in, tmp_path,
                                                               capsys):
        base, _ = stand_in
        with pytest.raises(SystemExit):
            main(["recommend", "--all-users", "--items", "a", "--model-dir", str(base),
                  "--out", str(tmp_path / "r.parquet")])
        assert "not allowed with" in capsys.readouterr().err
        for missing in (["--model-dir", str(base)], ["--out", str(tmp_path / "r.parquet")]):
            assert main(["recommend", "--all-users"] + missing) == 2
            assert "setting 'recommend.all_users' (--all-users): all_users needs" in (
                capsys.readouterr().err)
        with pytest.raises(SystemExit):
            main(["recommend", "--model", "shop"])  # no mode


@pytest.fixture(scope="module")
def shop(versions, tmp_path_factory):
    """A small real export (brute force: exact, so the job can be checked against numpy):
    the shared run's."""
    from session_helpers import copy_export

    base = tmp_path_factory.mktemp("export") / "shop"
    copy_export(versions, "brute_force", base)
    return base


class TestRealExport:
    def test_every_user_k_ranked_rows_equal_to_the_signature(self, shop, tmp_path):
        from tfrec.exporter import load_saved_model

        summary = all_users.recommend_all_users(shop, tmp_path / "recs.parquet", k=10,
                                                batch_size=64, progress=False)
        embeddings = shop / "1" / "assets.extra" / "embeddings"
        user_ids = (embeddings / "user_ids.txt").read_text().splitlines()
        assert summary.users == len(user_ids) > 100 and summary.fallback_users == 0
        table = pq.read_table(summary.path)
        assert table.num_rows == summary.rows == 10 * len(user_ids)
        assert table.column("user_id").to_pylist() == [u for u in user_ids for _ in range(10)]
        assert table.column("rank").to_pylist() == list(range(1, 11)) * len(user_ids)
        assert pq.ParquetFile(summary.path).metadata.num_row_groups == -(-len(user_ids) // 64)
        direct = load_saved_model(shop / "1").signatures["recommend_for_user"](
            user_ids=tf.constant(user_ids), k=tf.constant(10))
        assert direct["known"].numpy().all()
        assert (table.column("item_id").to_pylist()
                == direct["item_ids"].numpy().astype(str).ravel().tolist())
        # One batch of every user against batches of 64: the same sums, perhaps in
        # another order (the last bit may differ).
        np.testing.assert_allclose(table.column("score").to_numpy(),
                                   direct["scores"].numpy().ravel(), rtol=1e-6, atol=1e-7)

    def test_exact_top_k_of_the_cached_embeddings_without_own_items(self, shop, tmp_path):
        """users.npy x items.npy, the user_histories.npy items excluded: the job's rows are
        the exact top k (up to float ties), and never one of the user's own items."""
        embeddings = shop / "1" / "assets.extra" / "embeddings"
        users, items = np.load(embeddings / "users.npy"), np.load(embeddings / "items.npy")
        histories = np.load(embeddings / "user_histories.npy")
        item_ids = np.array((embeddings / "item_ids.txt").read_text().split())
        user_ids = (embeddings / "user_ids.txt").read_text().splitlines()
        scores = users @ items.T
        for row, history in enumerate(histories):
            scores[row, history[history > 0] - 1] = -np.inf  # vocabulary index i: row i - 1
        got = rows_by_user(all_users.recommend_all_users(
            shop, tmp_path / "r.parquet", k=20, progress=False).path)
        column = {item: i for i, item in enumerate(item_ids)}
        for row, user in enumerate(user_ids):
            ranked = got[user]
            own = set(item_ids[histories[row][histories[row] > 0] - 1])
            assert own and not own & {item for _, item, _ in ranked}
            mine = scores[row, [column[item] for _, item, _ in ranked]]
            np.testing.assert_allclose([s for _, _, s in ranked], mine, rtol=1e-5, atol=1e-5)
            kth = -np.sort(-scores[row])[19]
            assert min(mine) >= kth - 1e-5  # nothing better was left out

    def test_k_above_the_exports_max_k(self, shop, tmp_path, capsys):
        out = tmp_path / "recs.parquet"
        assert main(["recommend", "--all-users", "--model-dir", str(shop), "-k", "21",
                     "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "k must be between 1 and 20" in err and "tfrec_metadata.json" in err
        assert list(tmp_path.iterdir()) == []
