"""Sessions built from item index lists, for the item-item tests."""

import numpy as np

from tfrec.data.sessions import Sessions


def sessions_of(lists):
    """A `Sessions` holding these item index lists (one session each)."""
    lengths = [len(s) for s in lists]
    n, events = len(lists), sum(lengths)
    return Sessions(items=np.asarray([i for s in lists for i in s], np.int32),
                    weights=np.ones(events, np.float32), is_conversion=np.zeros(events, bool),
                    row_splits=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                    converted=np.full(n, -1, np.int32), converted_weight=np.zeros(n, np.float32),
                    user=np.zeros(n, np.int32), start_time=np.arange(n, dtype=np.int64),
                    user_ids=np.array(["u"], dtype=object))


def train_generated_run(folder, train, settings, num_events=8_000, num_items=150,
                        num_users=800, num_clusters=6, num_cold=5, seed=4):
    """A small run trained by `train(config, run_dir, verbose=0)` on generated clustered
    sessions (`write_event_files` in `folder`) with the run `settings` (`--set` overrides)
    on top of a small model; returns the run folder."""
    from tfrec.data.synthetic import event_files_settings, write_event_files
    from tfrec.run import load_run_config

    files = write_event_files(folder, num_events, num_items, num_users=num_users,
                              num_clusters=num_clusters, num_cold=num_cold, seed=seed)
    config = load_run_config(None, [
        *event_files_settings(*files), "model.embedding_dim=16", "model.text.token_dim=8",
        "model.text.filters=8", "train.epochs=1", "train.split_fraction=0.15", *settings])
    train(config, folder / "run", verbose=0)
    return folder / "run"


def copy_export(versions, kind, model_dir):
    """The shared run's export with this index kind ("brute_force" or "scann", max_k 20:
    the `versions` fixture's version 1 or 2) copied as that version of `model_dir`, with
    the `ExportResult` `export` gave for it (no module)."""
    import shutil

    from tfrec.exporter import ExportResult
    from tfrec.exporter.layout import VersionFolder

    number = {"brute_force": 1, "scann": 2}[kind]
    path = model_dir / str(number)
    shutil.copytree(versions / str(number), path)
    metadata = VersionFolder(path).read_metadata()
    assert metadata["index_kind"] == kind and metadata["max_k"] == 20
    return ExportResult(path, number, metadata)
