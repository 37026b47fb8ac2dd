"""A full disk (or a quota, or a read-only file system) while `tfrec export`, `export
--add-items` and `recommend --all-users` write: one `tfrec: error:` line naming the
folder, exit 2, nothing half-written left."""

import errno
import os
import shutil

import pyarrow.parquet as pq

from tfrec.cli import main
from tfrec.exporter.layout import VersionFolder, write_failure


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def one_error_line(err: str, folder) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"tfrec: error: {folder}: ")
    assert "No space left on device" in lines[0] and "Traceback" not in err
    return lines[0]


def test_write_failure_knows_full_disks_by_errno_or_text():
    assert write_failure(OSError(errno.ENOSPC, "No space left on device")) is not None
    assert write_failure(OSError(errno.EDQUOT, "Disk quota exceeded")) is not None
    assert write_failure(RuntimeError("could not append to x: No space left on device"))
    assert write_failure(OSError(errno.ENOENT, "No such file or directory")) is None
    assert write_failure(ValueError("bad value")) is None


def test_export_on_a_full_disk_is_one_line_and_exit_2(run_dir, tmp_path, monkeypatch,
                                                      capsys):
    model_dir = tmp_path / "models" / "shop"
    monkeypatch.setattr(VersionFolder, "write_metadata", disk_full)
    code = main(["-q", "export", "--run", str(run_dir), "--model-dir", str(model_dir),
                 "--index", "brute_force", "--max-k", "20", "--no-serving-config"])
    line = one_error_line(capsys.readouterr().err, model_dir)
    assert code == 2 and "cannot write version 1" in line
    assert not model_dir.exists()  # no version, no temporary, not the folder it made


def test_add_items_on_a_full_disk_is_one_line_and_exit_2(versions, tmp_path, monkeypatch,
                                                         capsys):
    model_dir = tmp_path / "shop"
    shutil.copytree(versions / "1", model_dir / "1")
    items = tmp_path / "more.csv"
    items.write_text("item_id,text,market\nnew-d,blue lamp,UK\n")
    monkeypatch.setattr(VersionFolder, "write_metadata", disk_full)
    code = main(["-q", "export", "--model-dir", str(model_dir), "--add-items", str(items),
                 "--no-serving-config"])
    line = one_error_line(capsys.readouterr().err, model_dir)
    assert code == 2 and "cannot write version 2" in line
    assert sorted(p.name for p in model_dir.iterdir()) == ["1"]


def test_all_users_on_a_full_disk_is_one_line_and_exit_2(versions, tmp_path,
                                                         monkeypatch, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    monkeypatch.setattr(pq.ParquetWriter, "write_table", disk_full)
    code = main(["-q", "recommend", "--all-users", "--model-dir", str(versions), "--version",
                 "1", "-k", "3", "--out", str(out_dir / "recs.parquet")])
    line = one_error_line(capsys.readouterr().err, out_dir)
    assert code == 2 and "cannot write the recommendations recs.parquet" in line
    assert list(out_dir.iterdir()) == []


def test_a_write_failure_no_writer_named_is_still_one_line(tmp_path, monkeypatch, capsys):
    from tfrec import all_users

    def full(*args, **kwargs):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(tmp_path / "x" / "f.bin"))

    monkeypatch.setattr(all_users, "recommend_all_users", full)
    code = main(["-q", "recommend", "--all-users", "--model-dir", str(tmp_path), "--out",
                 str(tmp_path / "r.parquet")])
    assert code == 2
    assert capsys.readouterr().err == (f"tfrec: error: {tmp_path / 'x'}: cannot write: "
                                       "Disk quota exceeded\n")


def test_a_write_failure_without_a_file_name_names_the_commands_folder(tmp_path, monkeypatch,
                                                                       capsys):
    """TensorFlow's writers fail without a file name: the command's own folder is named."""
    from tfrec.ranking import two_stage

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(two_stage, "train", full)
    code = main(["-q", "train", "--run-dir", str(tmp_path / "run")])
    assert code == 2
    assert capsys.readouterr().err == (f"tfrec: error: {tmp_path / 'run'}: cannot write: "
                                       "No space left on device\n")
