"""The settings schema: checks, error keys, help texts, flags and the generated reference."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tfrec import cli, config
from tfrec.config import (BatchingParameters, IndexConfig, ModelConfig, RunConfig, ServeConfig,
                          TextConfig, from_dict)
from tfrec.errors import InputError

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("data, key, reason", [
    ({"model": {"embeding_dim": 3}}, "model.embeding_dim", "unknown setting (did you mean"),
    ({"data": {"pairs": {"windw": 3}}}, "data.pairs.windw", "unknown setting"),
    ({"model": {"text": {"filters": "wide"}}}, "model.text.filters",
     "expected an integer, got 'wide' (str)"),
    ({"train": {"learning_rate": "fast"}}, "train.learning_rate", "expected a finite number"),
    ({"train": {"learning_rate": float("inf")}}, "train.learning_rate",
     "expected a finite number, got inf"),
    ({"model": {"use_ids": "yes"}}, "model.use_ids", "expected true or false"),
    ({"model": {"query_layers": [8, "x"]}}, "model.query_layers", "expected an integer, got 'x'"),
    ({"model": {"text_share": 1.5}}, "model.text_share",
     "text_share must be in (0, 1), got 1.5"),
    ({"model": {"text": {"widths": []}}}, "model.text.widths",
     "widths must be a non-empty list of positive integers"),
    ({"data": {"pairs": {"mode": "skip"}}}, "data.pairs.mode",
     "mode must be 'window' or 'set', got 'skip'"),
    ({"data": {"pairs": {"event_weights": {"click": -1}}}}, "data.pairs.event_weights.click",
     "must be >= 0"),
    ({"data": {"sessions": {"max_length": 1}}}, "data.sessions.max_length",
     "max_length must be an integer >= 2, got 1"),
    ({"train": {"steps_per_epoch": 0}}, "train.steps_per_epoch", "a positive integer"),
    # Evaluation's curves stop at 50 (`tfrec evaluate -k` takes no more).
    ({"train": {"eval_k": 60}}, "train.eval_k", "an integer from 1 to 50, got 60"),
    # A section with nothing under it (`events_schema:` in YAML), or not a mapping.
    ({"data": {"events_schema": None}}, "data.events_schema", "the section is empty"),
    ({"model": "big"}, "model", "expected a mapping of settings (name: value lines), got text "
                                "'big'"),
    # Seeds: what numpy's and TensorFlow's generators take (a traceback mid-run before).
    ({"data": {"pairs": {"seed": -5}}}, "data.pairs.seed", "an integer from 0 to 2147483647"),
    ({"train": {"seed": 10**20}}, "train.seed", "an integer from 0 to 2147483647"),
    ({"train": {"eval_seed": -1}}, "train.eval_seed", "an integer from 0 to 2147483647"),
    # Two roles of a table's schema on one column.
    ({"data": {"events_schema": {"event_col": "timestamp"}}}, "data.events_schema.event_col",
     "data.events_schema.time_col and data.events_schema.event_col both name the column "
     "'timestamp'"),
    ({"data": {"items_schema": {"market_col": "text"}}}, "data.items_schema.market_col",
     "both name the column 'text'"),
])
def test_bad_settings_name_the_full_key_and_the_file(data, key, reason):
    with pytest.raises(InputError) as err:
        from_dict(RunConfig, data, "run.yaml")
    assert (err.value.key, err.value.path) == (key, "run.yaml")
    assert reason in err.value.reason


@pytest.mark.parametrize("make, key", [
    (lambda: TextConfig(widths=(0,)), "model.text.widths"),
    (lambda: ModelConfig(history_dropout=1.0), "model.history_dropout"),
    (lambda: ModelConfig(use_ids=False, use_text=False), "model.use_text"),
    (lambda: IndexConfig(recall_floor=1.5), "index.recall_floor"),
    (lambda: ServeConfig(model_config_file="m", rest_api_timeout_seconds=0),
     "serve.rest_api_timeout_seconds"),
    (lambda: ServeConfig(), "serve.model_config_file"),
    (lambda: BatchingParameters(max_batch_size=0), "serve.batching.max_batch_size"),
    (lambda: from_dict(TextConfig, {"bogus": 1}), "model.text.bogus"),
])
def test_settings_built_directly_name_the_full_key(make, key):
    with pytest.raises(InputError) as err:
        make()
    assert err.value.key == key


def test_a_setting_checked_elsewhere_has_no_choices_here():
    negatives = config.setting_of("model.negatives")
    assert config.choices(ModelConfig, "negatives") == ()
    assert negatives.allowed.startswith("checked by ")
    assert ModelConfig(negatives="from_a_registry").negatives == "from_a_registry"
    # a Literal setting's allowed values come from its type
    assert config.setting_of("model.pooling").allowed == "'mean', 'recency' or 'attention'"


def test_every_setting_has_help_that_does_not_restate_its_default():
    found = config.settings()
    assert len({s.key for s in found}) == len(found) > 100
    for s in found:
        assert len(s.help) > 10, s.key
        if isinstance(s.default, (int, float)) and not isinstance(s.default, bool) and (
                s.default not in (0, 1)):
            shown = {f"{s.default:g}", f"{s.default:,}", str(s.default)}
            assert not any(re.search(rf"(?<![\w.]){re.escape(n)}(?![\w])", s.help)
                           for n in shown), (s.key, s.help)


def test_every_key_belongs_to_one_section():
    sections = config.sections()
    for s in config.settings():
        assert sections[s.key.rpartition(".")[0]] is s.owner
        assert s.owner.key(s.name) == s.key


@pytest.mark.parametrize("command", sorted(cli.COMMAND_SETTINGS))
def test_every_flag_maps_to_one_key_and_back(command):
    taken = cli.command_settings(command)
    flags = [s.flag for s in taken]
    assert len(flags) == len(set(flags)), flags
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    by_flag = {o: a.dest for a in sub._actions for o in a.option_strings}
    for s in taken:
        assert by_flag[s.flag] == s.key
    # and no flag of the command sets a key the schema does not have
    keys = {s.key for s in config.settings()}
    schema_dests = {d for d in by_flag.values() if "." in d}
    assert schema_dests == {s.key for s in taken} and schema_dests <= keys


def test_every_flagged_setting_is_some_commands():
    taken = {s.key for command in cli.COMMAND_SETTINGS for s in cli.command_settings(command)}
    assert taken == {s.key for s in config.settings() if s.flag}
    assert {s.flag for s in config.settings() if s.key.startswith("serve.")} >= {
        "--rest_api_timeout_seconds", "--max_batch", "--grace_period_seconds"}


def test_flags_reach_the_settings_with_schema_defaults_for_the_rest():
    parser = cli.build_parser()
    args = parser.parse_args(["export", "--model-dir", "m", "--run", "r", "--leaves", "7",
                              "--recall-floor", "0.8"])
    assert cli.given(args, IndexConfig) == {"num_leaves": 7, "recall_floor": 0.8}
    export = cli.command_config_of(args, config.ExportSettings)
    assert (export.run, export.model_dir, export.serving_config) == (
        "r", "m", config.ExportSettings.serving_config)
    args = parser.parse_args(["serve", "--model_config_file", "x.config"])
    serve = cli.command_config_of(args, ServeConfig)
    assert serve == ServeConfig(model_config_file="x.config")
    assert serve.rest_api_timeout_seconds == config.setting_of(
        "serve.rest_api_timeout_seconds").default


def test_help_shows_the_schema_default():
    result = subprocess.run([sys.executable, "-m", "tfrec", "serve", "--help"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    timeout = config.setting_of("serve.rest_api_timeout_seconds")
    assert f"{timeout.help} (default: {timeout.default})" in text


def test_cli_errors_name_the_flag_or_how_to_set_the_setting():
    assert cli.error_message(InputError("bad", key="serve.grace_period_seconds")) == (
        "setting 'serve.grace_period_seconds' (--grace_period_seconds): bad")
    assert cli.error_message(InputError("bad", key="model.text.filters")) == (
        "setting 'model.text.filters': bad (set it in the run config, or with "
        "--set model.text.filters=VALUE)")
    assert cli.error_message(InputError("bad", key="serve.batching.max_batch_size")).endswith(
        "(set it in the batching parameters file, serve.batching_parameters_file "
        "(--batching_parameters_file))")
    # a key in the text of a command's error gets its flag too
    assert cli.error_message(InputError("give export.run", key="export.model_dir")) == (
        "setting 'export.model_dir' (--model-dir): give export.run (--run)")
    # an unknown key is not told how to set it
    assert cli.error_message(InputError("unknown setting", key="model.nope")) == (
        "setting 'model.nope': unknown setting")
    # nor a value a config file gives (the message names the file); a data file's error is
    assert cli.error_message(InputError("bad", key="model.text.filters", path="run.yaml")) == (
        "run.yaml, setting 'model.text.filters': bad")
    assert cli.error_message(InputError("bad", key="data.events", path="ev.csv")).endswith(
        "(set it in the run config, or with --set data.events=VALUE)")


@pytest.mark.parametrize("flag,value,message", [
    ("--rest_api_timeout_seconds", "0",
     "setting 'serve.rest_api_timeout_seconds' (--rest_api_timeout_seconds): "
     "rest_api_timeout_seconds must be > 0, got 0.0"),
    ("--tensorflow_intra_op_parallelism", "-1",
     "setting 'serve.tensorflow_intra_op_parallelism' (--tensorflow_intra_op_parallelism): "
     "tensorflow_intra_op_parallelism must be an integer >= 0, got -1"),
    ("--batching_parameters_file", "b.config",
     "(--batching_parameters_file): a batching parameters file needs "
     "serve.enable_batching (--enable_batching)"),
])
def test_serve_settings_are_checked_with_their_flags(tmp_path, capsys, flag, value, message):
    config_file = tmp_path / "models.config"
    config_file.write_text('model_config_list { config { name: "m" base_path: "/x" } }\n')
    assert cli.main(["serve", "--model_config_file", str(config_file), flag, value]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_command_setting_is_named_with_its_flag(tmp_path, capsys):
    assert cli.main(["export", "--model-dir", str(tmp_path / "m")]) == 2
    assert "setting 'export.run' (--run): give the run folder" in capsys.readouterr().err


def test_the_settings_page_is_what_the_schema_generates():
    page = ROOT / "tfrec" / "configs" / "SETTINGS.md"
    assert config.REFERENCE_PAGE == page
    assert page.read_text() == config.settings_reference(), f"run: {config.REFERENCE_COMMAND}"
    text = page.read_text()
    for s in config.settings():
        flag = f"`{s.flag}`" if s.flag else ""
        row = next(line for line in text.splitlines() if line.startswith(f"| `{s.key}` |"))
        assert f"| {flag} |" in row and s.help.replace("|", "\\|") in row
    # allowed values come from the Literal types, not from the help text
    row = next(line for line in text.splitlines()
               if line.startswith("| `data.events_schema.time_unit` |"))
    assert "| `s` | 's', 'ms', 'us' or 'ns' |" in row
    assert "'window' or 'set'" in text and "'time' or 'user'" in text


def test_the_settings_page_command_writes_the_page(tmp_path, capsys):
    assert config.main(["--reference", str(tmp_path / "page.md")]) == 0
    assert (tmp_path / "page.md").read_text() == config.settings_reference()
    # the older spelling writes the page of the repository whose README it is given
    (tmp_path / "tfrec" / "configs").mkdir(parents=True)
    assert config.main(["--readme", str(tmp_path / "README.md")]) == 0
    assert ((tmp_path / "tfrec" / "configs" / "SETTINGS.md").read_text()
            == config.settings_reference())
    assert config.main([]) == 0
    assert capsys.readouterr().out == config.settings_reference()


def _anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown text (code blocks left out)."""
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.*)$", text, re.M)}


def test_the_readme_links_to_the_settings_page():
    readme = (ROOT / "README.md").read_text()
    assert "(tfrec/configs/SETTINGS.md)" in readme
    assert "| `data.events_schema.time_unit` |" not in readme
    # every link of the README to one of its sections, or to a file of the repository (and
    # a section of it), leads somewhere
    for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"```.*?```", "", readme, flags=re.S)):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        page = ROOT / path if path else ROOT / "README.md"
        assert page.exists(), target
        if anchor:
            assert anchor in _anchors(page.read_text()), target


def test_a_time_unit_outside_the_allowed_ones_is_refused():
    with pytest.raises(InputError) as err:
        from_dict(RunConfig, {"data": {"events_schema": {"time_unit": "minutes"}}})
    assert err.value.key == "data.events_schema.time_unit"
    assert "'s', 'ms', 'us' or 'ns'" in str(err.value)


def test_the_shipped_batching_config_holds_the_schema_defaults():
    shipped = (ROOT / "serving_config" / "batching.config").read_text()
    assert shipped == BatchingParameters().to_text()


def test_batching_parameters_file_round_trip(tmp_path):
    from tfrec.serving.batching import read_batching_parameters

    params = BatchingParameters(max_batch_size=64, batch_timeout_micros=500,
                                pad_variable_length_inputs=False)
    path = tmp_path / "batching.config"
    path.write_text(params.to_text())
    assert read_batching_parameters(path) == params
    path.write_text("max_batch_size { value: 0 }\n")
    with pytest.raises(InputError) as err:
        read_batching_parameters(path)
    assert (err.value.key, err.value.path) == ("serve.batching.max_batch_size", str(path))


def test_the_run_config_round_trips_through_json():
    run = from_dict(RunConfig, {"model": {"query_layers": [8], "text": {"char_ngrams": [3]}},
                                "train": {"split_date": "2011-10-01"}})
    assert from_dict(RunConfig, json.loads(json.dumps(run.to_dict()))) == run


def test_the_schema_imports_no_tensorflow():
    code = ("import sys, tfrec.config as c; c.settings_reference(); "
            "print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_the_library_names_only_keys_of_the_schema():
    # every literal key an InputError names (key="...", or a key= default) is a setting
    keys = {s.key for s in config.settings()}
    found = {}
    for path in (ROOT / "tfrec").rglob("*.py"):
        text = path.read_text()
        for literal in (re.findall(r"""\bkey(?::\s*str)?\s*=\s*["']([^"']+)["']""", text)
                        + re.findall(r"""require\([^,]+, "(\w+\.[\w.]+)"\)""", text)):
            found.setdefault(literal, path.name)
    assert len(found) > 25
    assert {key: where for key, where in found.items() if key not in keys} == {}


@pytest.mark.parametrize("data, suggested", [
    ({"model": {"embeding_dim": 3}}, "(did you mean model.embedding_dim?)"),
    ({"model": {"embedding_dimension": 3}}, "(did you mean model.embedding_dim?)"),
    ({"data": {"window": 3}}, "(did you mean data.pairs.window?)"),  # another data section's
    ({"modle": {}}, "(did you mean model?)"),
    # The right name in the wrong section.
    ({"ranking": {"split_fraction": 0.2}}, "(did you mean train.split_fraction?)"),
])
def test_an_unknown_setting_suggests_the_closest_full_key(data, suggested):
    with pytest.raises(InputError) as err:
        from_dict(RunConfig, data, "run.yaml")
    assert err.value.reason == f"unknown setting {suggested}"


def _cli_error(tmp_path, capsys, *args) -> str:
    assert cli.main(["-q", "prepare", *args]) == 2
    return capsys.readouterr().err.strip()


def test_a_mistyped_key_is_reported_where_it_was_given_without_advice(tmp_path, capsys):
    run = tmp_path / "run.yaml"
    run.write_text("model:\n  embeding_dim: 8\n")
    assert _cli_error(tmp_path, capsys, "--config", str(run)) == (
        f"tfrec: error: {run}, setting 'model.embeding_dim': unknown setting "
        "(did you mean model.embedding_dim?)")
    # given with --set: named as such, not as the config file's
    run.write_text("model:\n  embedding_dim: 8\n")
    assert _cli_error(tmp_path, capsys, "--config", str(run), "--set",
                      "model.embeding_dim=3") == (
        "tfrec: error: setting 'model.embeding_dim': unknown setting (did you mean "
        "model.embedding_dim?); given with --set model.embeding_dim=3")
    # a bad value given with --set too (and no advice to set it again)
    assert _cli_error(tmp_path, capsys, "--set", "model.embedding_dim=big") == (
        "tfrec: error: setting 'model.embedding_dim': expected an integer, got 'big' (str); "
        "given with --set model.embedding_dim=big")
    # From Python, one override as a string rather than a list: said so, not read letter
    # by letter.
    from tfrec.run import load_run_config

    with pytest.raises(TypeError, match="a list of 'section.key=value' strings, got the "
                                        "string 'model.embedding_dim=8'"):
        load_run_config(run, "model.embedding_dim=8")


def test_a_bad_value_in_the_file_is_still_the_files(tmp_path):
    from tfrec.run import load_run_config

    run = tmp_path / "run.yaml"
    run.write_text("model:\n  embedding_dim: big\n")
    with pytest.raises(InputError) as err:
        load_run_config(run, ["model.use_ids=true"])
    assert (err.value.path, err.value.key) == (str(run), "model.embedding_dim")
    assert "--set" not in err.value.message


def test_relative_paths_in_a_config_file_are_the_files_folders(tmp_path, monkeypatch):
    from tfrec.run import load_run_config

    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "run.yaml").write_text(
        "data:\n  layout: events\n  events: ../data/events.csv\n  items: items.csv\n"
        "  data_dir: shared\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_run_config("../configs/run.yaml")
    assert (config.data.events, config.data.items, config.data.data_dir) == (
        str(tmp_path / "data" / "events.csv"), str(folder / "items.csv"), str(folder / "shared"))
    # stored absolute in the run's config
    saved = json.loads(json.dumps(config.to_dict()))["data"]
    assert saved["events"] == str(tmp_path / "data" / "events.csv")
    # a path given with --set is the working directory's; an absolute one is kept
    config = load_run_config("../configs/run.yaml", ["data.items=mine.csv",
                                                     f"data.events={tmp_path / 'e.csv'}"])
    assert config.data.items == str(elsewhere / "mine.csv")
    assert config.data.events == str(tmp_path / "e.csv")


def test_the_readme_names_no_strict_flag():
    opts = {option for command in cli.build_parser()._subparsers._group_actions[0].choices
            .values() for action in command._actions for option in action.option_strings}
    assert "--strict" not in opts
    readme = (ROOT / "README.md").read_text()
    assert "--strict" not in readme and "--set data.strict=true" in readme


def test_a_run_setting_given_as_a_flag_is_named_by_its_flag(tmp_path, capsys):
    assert cli.main(["-q", "train", "--epochs", "0", "--run-dir", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip() == (
        "tfrec: error: setting 'train.epochs' (--epochs): epochs must be a positive integer, "
        "got 0")


def test_dates_in_a_config_file_or_set_are_text_an_impossible_one_too(tmp_path):
    from tfrec.run import load_run_config

    path = tmp_path / "run.yaml"
    path.write_text("train:\n  split_date: 2024-02-30\n  until: 2024-03-01\n")
    config = load_run_config(str(path), ["train.split_date=2024-02-31"])
    assert (config.train.split_date, config.train.until) == ("2024-02-31", "2024-03-01")
    config = load_run_config(str(path))
    assert config.train.split_date == "2024-02-30"  # refused later, naming the setting


def test_config_files_read_numbers_as_yaml_1_2_and_refuse_a_key_given_twice(tmp_path):
    from tfrec.run import load_run_config

    path = tmp_path / "run.yaml"
    path.write_text("train:\n  learning_rate: 1e-3\nmodel:\n  embedding_dim: 016\n")
    run = load_run_config(str(path), ["train.seed=1_000"])
    assert (run.train.learning_rate, run.model.embedding_dim, run.train.seed) == (
        0.001, 16, 1000)  # YAML 1.1 read 1e-3 as text and 016 as octal 14
    assert load_run_config(None, ["train.learning_rate=5E-3"]).train.learning_rate == 0.005
    # A second `model:` section replaced the first one whole, silently.
    path.write_text("model:\n  embedding_dim: 8\n  text: {filters: 8}\ntrain: {epochs: 1}\n"
                    "model:\n  embedding_dim: 9\n")
    with pytest.raises(InputError, match="the key 'model' is given twice") as err:
        load_run_config(str(path))
    assert (err.value.path, err.value.line) == (str(path), 5)
    json_path = tmp_path / "run.json"
    json_path.write_text('{"data": {"layout": "events", "layout": "goodbooks"}}')
    with pytest.raises(InputError, match="the key 'layout' is given twice"):
        load_run_config(str(json_path))
    # A file holding one value is not an empty file; an empty section takes --set keys.
    path.write_text("false\n")
    with pytest.raises(InputError, match="expected a mapping of settings"):
        load_run_config(str(path))
    path.write_text("model:\n")
    assert load_run_config(str(path), ["model.embedding_dim=32"]).model.embedding_dim == 32


def test_a_flag_the_message_names_already_is_not_added_again():
    message = cli.error_message(InputError(
        "raise it (--reorder), lower index.max_session_items (--max-session-items), or "
        "index.max_k", key="index.num_reordering_candidates"))
    assert message == ("setting 'index.num_reordering_candidates' (--reorder): raise it "
                       "(--reorder), lower index.max_session_items (--max-session-items), or "
                       "index.max_k (--max-k)")


def test_versions_are_what_tf_serving_can_address():
    from tfrec.config import ExportSettings, RecommendSettings

    for make in (lambda v: ExportSettings(model_dir="m", run="r", version=v),
                 lambda v: RecommendSettings(model="m", items="i1", version=v)):
        with pytest.raises(InputError, match="an integer from 1 to 9223372036854775807"):
            make(2**63)
        assert make(2**63 - 1).version == 2**63 - 1


def test_recommend_items_are_one_csv_row():
    from tfrec.config import RecommendSettings

    def session(items):
        return RecommendSettings(server="h:1", model="m", items=items).session

    assert session("85123A,71053") == ["85123A", "71053"]
    assert session(" a , b ,") == ["a", "b"]
    assert session('"a,b",c') == ["a,b", "c"]  # an id holding a comma, quoted
    # A quote that never closes was read to the end ('"a,b' gave the id a,b).
    with pytest.raises(InputError, match=r"recommend.items.*cannot be read as one CSV row: "
                                         r"a quote opens and never closes"):
        session('"a,b')
    assert session('"a,b" , c') == ["a,b", "c"]  # a space after a closing quote reads
