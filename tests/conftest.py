"""Shared fixtures: tiny inline event logs written to temporary files."""

from __future__ import annotations

import os
import textwrap

import pytest

import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before any test imports TensorFlow)

# Tests never download a data set (test_datasets_download.py serves one on a loopback
# server); TFREC_DATA_DOWNLOAD=1 lets the data-folder fixtures below fetch the real ones.
os.environ.setdefault("TFREC_DATA_DOWNLOAD", "0")


@pytest.fixture
def write(tmp_path):
    """write(name, text) -> path of a file holding the dedented text."""

    def _write(name: str, text: str):
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return _write


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A small trained run (generated clustered sessions, retrieval, one epoch)."""
    from session_helpers import train_generated_run
    from tfrec.training import train

    return train_generated_run(tmp_path_factory.mktemp("run"), train, [
        "model.objective=retrieval", "train.retrieval_batch_size=128"])


def _from_data_folder(find):
    """find() from the data folder; skips, saying how to get the data, when it is absent."""
    from tfrec.errors import InputError

    try:
        return find()
    except InputError as err:
        pytest.skip(err.message)


@pytest.fixture
def online_retail_file():
    """The UCI Online Retail file from the data folder (skipped if absent)."""
    from tfrec.datasets import online_retail_path

    return _from_data_folder(online_retail_path)


@pytest.fixture
def goodbooks_dir():
    """The goodbooks-10k folder from the data folder (skipped if absent)."""
    from tfrec.datasets import goodbooks_folder

    return _from_data_folder(goodbooks_folder)


@pytest.fixture(scope="session")
def shared_versions(run_dir, tmp_path_factory):
    """Two exported versions (brute force, then ScaNN, max_k 20) of `run_dir` kept aside, to
    drop into a served base_path or copy (session_helpers.copy_export)."""
    from tfrec.exporter import export
    from tfrec.index import IndexConfig

    store = tmp_path_factory.mktemp("store")
    export(run_dir, store / "shop", IndexConfig(kind="brute_force", max_k=20))
    export(run_dir, store / "shop", IndexConfig(kind="scann", max_k=20))
    return store / "shop"


@pytest.fixture(scope="session")
def versions(shared_versions):
    """`shared_versions` (a module may name a fixture of its own `versions`)."""
    return shared_versions
