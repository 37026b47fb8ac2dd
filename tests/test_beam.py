"""The all-users job as an Apache Beam pipeline (DirectRunner) against the local job."""

from __future__ import annotations

import contextlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pathlib import Path

import pytest

from tfrec import all_users
from tfrec.cli import main
from tfrec.errors import InputError
from tfrec.beam import all_users as beam_all_users
from tfrec.exporter.layout import VersionFolder

K = 10


@pytest.fixture(scope="module")
def shop(versions, tmp_path_factory):
    """A small brute-force export of the shared run (its users cached in the model)."""
    from session_helpers import copy_export

    model_dir = tmp_path_factory.mktemp("beam") / "shop"
    copy_export(versions, "brute_force", model_dir)
    return model_dir


def by_user_and_rank(table: pa.Table) -> pa.Table:
    return table.replace_schema_metadata(None).sort_by([("user_id", "ascending"),
                                                        ("rank", "ascending")])


def read_sorted(paths) -> pa.Table:
    return by_user_and_rank(pa.concat_tables([pq.read_table(p) for p in paths]))


def test_beam_pipeline_equals_local_job_row_for_row(shop, tmp_path):
    local = all_users.recommend_all_users(shop, tmp_path / "local.parquet", k=K, batch_size=64,
                                          progress=False)
    # Other batch sizes than the local job's, two worker threads: the rows must not depend
    # on how the users were grouped.
    summary = beam_all_users.run(shop, str(tmp_path / "beam" / "recs"), k=K, batch_size=50,
                                 pipeline_args=["--runner=DirectRunner",
                                                "--direct_num_workers=2"])

    assert summary.state == "DONE" and summary.shards
    assert all(s.endswith(".parquet") and "-of-" in s for s in summary.shards)
    # Beam's temporary folder is gone once the shards are in place.
    assert sorted(p.name for p in (tmp_path / "beam").iterdir()) == sorted(
        Path(s).name for s in summary.shards), list((tmp_path / "beam").iterdir())
    beam_rows = read_sorted(summary.shards)
    local_rows = read_sorted([local.path])
    assert beam_rows.schema.remove_metadata() == all_users.SCHEMA
    assert local.users > 100 and beam_rows.num_rows == local.rows == local.users * K
    # The same users, items and ranks; scores equal up to float32 rounding (a matrix
    # product's summation order may follow the batch's size).
    for column in ("user_id", "rank", "item_id"):
        assert beam_rows.column(column).equals(local_rows.column(column)), column
    np.testing.assert_allclose(beam_rows.column("score").to_numpy(),
                               local_rows.column("score").to_numpy(), rtol=1e-5, atol=1e-6)
    assert (summary.users, summary.rows, summary.fallback_users) == (local.users, local.rows, 0)


def test_beam_pipeline_users_file_flags_unknown_users(shop, tmp_path):
    known = VersionFolder(all_users.version_folder(shop)).user_ids.read_text().split()[:3]
    users = tmp_path / "users.txt"
    # Each id once, spaces around it (and a byte-order mark) removed, blank lines skipped.
    users.write_text("\ufeff" + "\n".join(known + ["nobody", "", f"  {known[0]} ", known[1]])
                     + "\n")
    summary = beam_all_users.run(shop, str(tmp_path / "recs"), k=5, users=str(users))

    rows = read_sorted(summary.shards)
    assert sorted(set(rows["user_id"].to_pylist())) == sorted(known + ["nobody"])
    assert (summary.users, summary.fallback_users) == (4, 1)
    signature = all_users.load_user_recommender(all_users.version_folder(shop))
    local = all_users.recommend_batch(signature, known + ["nobody"], 5)
    assert rows.equals(by_user_and_rank(local))


def test_beam_pipeline_refuses_bad_input_before_running(shop, tmp_path):
    (tmp_path / "recs-00000-of-00001.parquet").write_bytes(b"earlier output")
    with pytest.raises(InputError, match="output shards exist already"):
        beam_all_users.run(shop, str(tmp_path / "recs"), k=K)
    assert (tmp_path / "recs-00000-of-00001.parquet").read_bytes() == b"earlier output"
    with pytest.raises(InputError, match="no such users file"):
        beam_all_users.run(shop, str(tmp_path / "x"), k=K, users=str(tmp_path / "missing.txt"))
    with pytest.raises(InputError, match="version 7 does not exist"):
        beam_all_users.run(shop, str(tmp_path / "x"), k=K, version=7)
    assert not list(tmp_path.glob("x*"))


def test_cli_runs_the_pipeline_with_beam_options(shop, tmp_path, capsys):
    out = tmp_path / "cli" / "recs"
    assert main(["-q", "recommend", "--all-users", "--model-dir", str(shop), "-k", "3",
                 "--out", str(out), "--runner", "DirectRunner", "--direct_num_workers=1"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("pipeline DONE in ") and "users x top 3" in printed
    shards = sorted(str(p) for p in out.parent.glob("recs-*-of-*.parquet"))
    assert shards and all(s in printed for s in shards)

    def refused(*extra: str) -> str:
        with pytest.raises(SystemExit) if "--bogus" in extra else contextlib.nullcontext():
            assert main(["recommend", "--all-users", "--model-dir", str(shop), "--out",
                         str(tmp_path / "y"), *extra]) == 2
        return capsys.readouterr().err

    assert "setting 'recommend.k' (-k): k must be between 1 and 20" in refused(
        "-k", "21", "--runner", "DirectRunner")
    assert "(--out)" in refused("--out", str(out), "--runner", "DirectRunner")
    assert "never replaces output shards" in refused("--runner", "DirectRunner", "--overwrite")
    assert "unrecognized arguments: --bogus" in refused("--bogus")  # no runner: no Beam options
    err = refused("-k", "3", "--runner", "NoSuchRunner")
    assert "setting 'recommend.runner' (--runner): Unexpected pipeline runner: NoSuchRunner " \
           "(a Beam runner" in err and "Traceback" not in err
    assert not list(tmp_path.glob("y*"))
