"""The top-level API: `import tfrec` is cheap, and every public name resolves."""

import subprocess
import sys

import pytest

import tfrec


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_import_tfrec_does_not_import_tensorflow():
    assert _python("import tfrec, sys; print('tensorflow' in sys.modules)") == "False"


def test_a_public_name_imports_its_module_on_first_use():
    out = _python("import tfrec, sys; print(tfrec.HybridModel); "
                  "print('tensorflow' in sys.modules)")
    assert out.splitlines() == ["<class 'tfrec.models.hybrid.HybridModel'>", "True"]


def test_every_public_name_resolves():
    from tfrec.exporter import saved_model
    from tfrec.models import builder, hybrid
    from tfrec.ranking import two_stage
    from tfrec.towers import item_encoder, query_tower, text_encoder

    for name in set(tfrec.__all__) - {"__version__", "custom_objects"}:
        value = getattr(tfrec, name)
        assert value.__name__ == name and value.__module__.startswith("tfrec."), name
    assert set(tfrec.__all__) <= set(dir(tfrec))
    # The same objects as their modules', not copies.
    assert tfrec.HybridModel is hybrid.HybridModel and tfrec.build_model is builder.build_model
    assert tfrec.ItemEncoder is item_encoder.ItemEncoder
    assert tfrec.TextEncoder is text_encoder.TextEncoder
    assert tfrec.QueryTower is query_tower.QueryTower
    assert tfrec.export is saved_model.export
    assert tfrec.load_saved_model is saved_model.load_saved_model
    # What `tfrec train` runs: the two-tower, then the ranking stage (by default).
    assert tfrec.train is two_stage.train and callable(tfrec.load_run_config)
    assert tfrec.__version__


def test_a_keras_model_of_ones_own_with_tfrec_layers_loads_in_a_new_process(tmp_path):
    """Keras finds a layer class inside a functional model only once it is registered:
    `tfrec.custom_objects()` registers every tfrec class (and is Keras' custom_objects)."""
    path = tmp_path / "mine.keras"
    _python(f"""
import tfrec, tf_keras as keras
from tfrec.towers import TextTokenizer
texts = keras.Input(shape=(), dtype="string")
tokens = TextTokenizer(["red", "mug"], sequence_length=4)(texts)
out = keras.layers.Embedding(4, 2)(tokens)
keras.Model(texts, out, name="mine").save({str(path)!r})
""")
    out = _python(f"""
import tfrec, tf_keras as keras
try:
    keras.models.load_model({str(path)!r})
except Exception:  # Keras cannot find TextTokenizer: why the function exists
    print("refused")
print(keras.models.load_model({str(path)!r}, custom_objects=tfrec.custom_objects()).name)
print(keras.models.load_model({str(path)!r}).name)  # registered now
print(sorted(tfrec.custom_objects()))
""").splitlines()
    assert out[:3] == ["refused", "mine", "mine"]
    names = out[3]
    for name in ("ItemEncoder", "QueryTower", "TextEncoder", "TextTokenizer", "HybridModel",
                 "SkipGramTask", "RetrievalTask", "CandidateRanker"):
        assert f"'tfrec>{name}'" in names


def test_the_exporter_names_import_on_first_use():
    out = _python("import sys, tfrec.exporter as e; print('tensorflow' in sys.modules); "
                  "print(e.VersionFolder.__module__, e.export.__module__); "
                  "print('tensorflow' in sys.modules)")
    assert out.splitlines() == ["False", "tfrec.exporter.layout tfrec.exporter.saved_model",
                                "True"]


def test_unknown_names_are_attribute_errors_and_submodules_still_import():
    with pytest.raises(AttributeError, match="no_such_name"):
        tfrec.no_such_name  # noqa: B018
    from tfrec import cli  # a submodule, not a public name

    assert callable(cli.main)
