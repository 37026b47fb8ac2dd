import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tfrec.cli import build_parser, main

EVENTS = """
    user_id,item_id,timestamp,event
    u1,a,2024-01-01 10:00:00,click
    u1,b,2024-01-01 10:05:00,click
    u1,c,2024-01-01 10:09:00,purchase
    u2,a,2024-01-01 11:00:00,click
    u2,b,2024-01-01 11:20:00,click
"""
ITEMS = """
    item_id,text
    a,red mug
    b,blue mug
    c,green mug
    d,new yellow mug
"""


def prepare_args(write, events=EVENTS, items=None, *sets):
    """`tfrec prepare` arguments: a run config naming the events (and items) table, no
    held-out split, window 1, no subsampling; then `--set` for each of `sets`."""
    config = {"data": {"layout": "events", "events": str(write("events.csv", events)),
                       "events_schema": {"event_col": "event"},
                       "pairs": {"window": 1, "subsample": 0.0}},
              "model": {"use_text": items is not None},
              "train": {"split_fraction": 0.0}}
    if items is not None:
        config["data"]["items"] = str(write("items.csv", items))
    args = ["--config", str(write("run.json", json.dumps(config)))]
    for item in sets:
        args += ["--set", item]
    return args


def run_cli(*args):
    env = dict(os.environ)
    env.pop("TF_USE_LEGACY_KERAS", None)
    return subprocess.run([sys.executable, "-m", "tfrec", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_prepare_reports_sessions_pairs_and_cold_items(write, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["-q", "prepare", *prepare_args(write, EVENTS, ITEMS), "--out", str(out),
                 "--json"])
    assert code == 0
    printed = capsys.readouterr()
    report = json.loads(printed.out)  # stdout: the JSON alone, the files named on stderr
    assert "wrote report" in printed.err
    assert report["events"] == 5 and report["users"] == 2 and report["sessions"] == 2
    assert report["converted_sessions"] == 1
    assert (report["items"], report["warm_items"], report["cold_items"]) == (4, 3, 1)
    # window 1: a-b, b-c both ways (4) + b-a both ways (2); global: a->c, b->c (2).
    assert report["pairs_per_epoch"] == 8 and report["global_context_pairs"] == 2
    assert (out / "vocab.tsv").read_text().splitlines()[-1] == "d\t0\t\tnew yellow mug"
    assert json.loads((out / "report.json").read_text())["pairs_per_epoch"] == 8


def test_prepare_text_report(write, capsys):
    assert main(["-q", "prepare", *prepare_args(write)]) == 0
    text = capsys.readouterr().out
    assert "pairs per epoch" in text and "sessions" in text and "cold" in text


def test_prepare_reads_the_run_config_as_train_does(write, capsys):
    """The report describes what `tfrec train` with the same config will do."""
    args = prepare_args(write, EVENTS, None, "data.pairs.batch_size=3",
                        "train.retrieval_batch_size=2", "model.objective=both")
    assert main(["-q", "prepare", *args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pair_config"]["batch_size"] == 3 and report["pair_config"]["window"] == 1
    assert report["objective"] == "both" and report["retrieval_batch_size"] == 2
    # 8 pairs in batches of 3; retrieval: every event but the first of its session.
    assert (report["batches_per_epoch"], report["retrieval_examples_per_epoch"],
            report["retrieval_batches_per_epoch"]) == (3, 3, 2)
    assert report["steps_per_epoch"] == 3  # the pair stream sets the epoch under "both"
    # With no config, the bundled one (the one `tfrec train` uses) is read.
    from tfrec.run import DEFAULT_CONFIG, command_config, load_run_config

    assert command_config() == load_run_config(DEFAULT_CONFIG)
    # Other data named by --set alone is not held to Online Retail's split date.
    other = ["data.layout=events", "data.events=events.csv"]
    assert command_config(None, other).train.split_date is None
    assert command_config(None, [*other, "train.split_date=2024-03-01"]).train.split_date == (
        "2024-03-01")
    assert command_config(None, ["train.epochs=1"]).train.split_date == "2011-10-01"


def test_prepare_lists_event_types_and_warns_of_settings_the_data_cannot_honour(write, capsys):
    args = prepare_args(write, EVENTS, ITEMS, "data.pairs.event_weights={Cart: 5, Click: 2}",
                        "data.pairs.market_negatives=2", "model.objective=both")
    assert main(["-q", "prepare", *args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["event_types"] == {"click": 4, "purchase": 1}
    assert report["warnings"] == [
        "data.pairs.event_weights names event types the events do not hold: cart (the types "
        "found: click, purchase); their weights apply to nothing",
        "data.pairs.market_negatives is 2 but the items have no market "
        "(data.items_schema.market_col): those negatives are drawn from the whole catalogue, "
        "as the others"]
    # Weights' keys are read in lower case, as event types are: `Click: 2` weighs clicks.
    from tfrec.run import load_run_config

    weights = load_run_config(args[1], args[3::2]).data.pairs.event_weights
    assert weights["click"] == 2 and weights["cart"] == 5 and "Click" not in weights
    assert main(["-q", "prepare", *args]) == 0
    assert "event types 2 click 4, purchase 1" in " ".join(capsys.readouterr().out.split())
    # Events without a type beside typed ones are counted, not left out of the breakdown.
    untyped = EVENTS.replace("10:05:00,click", "10:05:00,")
    assert main(["-q", "prepare", *prepare_args(write, untyped, ITEMS), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["event_types"] == {"click": 3, "purchase": 1,
                                                                  "(no type)": 1}


def test_prepare_warns_of_conversion_types_the_events_do_not_hold(write, capsys):
    # A typo (`purchased`) would leave every session unconverted without a word.
    args = prepare_args(write, EVENTS, ITEMS, "data.sessions.conversion_types=[purchased]")
    assert main(["-q", "prepare", *args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["converted_sessions"] == 0
    assert report["warnings"] == [
        "data.sessions.conversion_types names event types the events do not hold: purchased "
        "(the types found: click, purchase); no session converts by them"]
    args = prepare_args(write, EVENTS, ITEMS, "data.sessions.conversion_types=[Purchase]")
    assert main(["-q", "prepare", *args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["warnings"] == []


def test_events_named_by_set_alone_are_split_by_the_latest_share(write, capsys):
    # No --config: the default config's split date (2011) would leave no training events.
    args = ["--set", "data.layout=events", "--set", f"data.events={write('e.csv', EVENTS)}",
            "--set", "model.use_text=false", "--set", "train.split_fraction=0.3"]
    assert main(["-q", "prepare", *args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0 < report["training_events"] < report["events"]


def test_prepare_counts_the_training_slice_of_a_split(write, capsys):
    # u1's session (a, b, c, purchase of c) is before 10:30, u2's (a, b) after.
    args = prepare_args(write, EVENTS, None, "data.pairs.batch_size=3",
                        "train.split_date='2024-01-01 10:30'", "model.objective=skipgram")
    # With the ranking stage (the default) the two-tower's epochs leave out the ranker's
    # slice, and the report counts what they run.
    assert main(["-q", "prepare", *args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    ranker = report["ranker_slice"]
    assert ranker["events"] > 0 and report["training_events"] + ranker["events"] == 3
    # Its one event makes no session the ranker can learn from: said before training.
    assert ranker["sessions"] == 0
    assert any("the ranker's slice (1 event) has no session with two distinct items" in w
               for w in report["warnings"])
    args += ["--set", "ranking.enabled=false"]
    assert main(["-q", "prepare", *args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ranker_slice"] is None
    assert report["events"] == 5 and report["sessions"] == 2  # the data as read
    assert report["training_events"] == 3 and report["training_sessions"] == 1
    # window 1 in u1's session: a-b, b-c both ways (4); global: a->c, b->c (2).
    assert report["pairs_per_epoch"] == 6 and report["global_context_pairs"] == 2
    assert report["batches_per_epoch"] == 2 and report["steps_per_epoch"] == 2
    assert (report["split"]["events_before"], report["split"]["events_after"]) == (3, 2)
    # The events and items files are counted apart.
    items = write("items.csv", ITEMS)
    args += ["--set", f"data.items={items}"]
    assert main(["-q", "prepare", *args, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows_read"]
    assert rows == {str(items.parent / "events.csv"): 5, str(items): 4}


@pytest.mark.parametrize("content, args, expected", [
    (None, [], "events file not found"),
    ("user_id,item_id\nu,a\n", [], "no column 'timestamp'"),
    ("user_id,item_id,timestamp\n", [], "header but no rows"),
    ("user_id,item_id,timestamp\nu,a,2024-01-01\nu,b,soon\n", ["data.strict=true"],
     "line 3, column 'timestamp': cannot parse 'soon'"),
    ("user_id,item_id,timestamp\nu,a,2024-01-01\n", ["data.pairs.window=0"],
     "window must be a positive integer"),
    ("user_id,item_id,timestamp\nu,a,2024-01-01\n", ["data.pairs.event_weights"],
     "--set expects section.key=value"),
])
def test_bad_input_exits_2_with_one_message_and_no_traceback(
        tmp_path, capsys, content, args, expected):
    path = tmp_path / "events.csv"
    if content is not None:
        path.write_text(content)
    sets = ["data.layout=events", f"data.events={path}", "model.use_text=false", *args]
    argv = ["prepare", *[arg for item in sets for arg in ("--set", item)]]
    assert main(argv) == 2
    stderr = capsys.readouterr().err
    assert expected in stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("tfrec: error: ")
    if content is None:  # the whole process too, once: its exit status and stderr
        result = run_cli(*argv)
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("tfrec: error: ")


def test_conflicting_item_text_strict_exits_2(write, capsys):
    args = prepare_args(write, EVENTS, "item_id,text\na,red mug\na,red cup\n",
                        "data.strict=true")
    assert main(["prepare", *args]) == 2
    stderr = capsys.readouterr().err
    assert "line 3, column 'text': item 'a' has text 'red cup' here but 'red mug' at line 2" in (
        stderr)
    assert "Traceback" not in stderr


def test_lenient_mode_reports_rejected_rows_and_writes_them(write, tmp_path, capsys):
    out = tmp_path / "out"
    args = prepare_args(write, EVENTS + "    u3,d,not a time,click\n")
    assert main(["-q", "prepare", *args, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "events: unparseable timestamp" in text and "line 7" in text
    assert "not a time" in (out / "rejected_rows.csv").read_text()
    # The same folder for clean data: the earlier run's rejected rows are not left there.
    assert main(["-q", "prepare", *prepare_args(write, EVENTS), "--out", str(out)]) == 0
    assert not (out / "rejected_rows.csv").exists()


def test_output_piped_into_a_reader_that_stops_early_ends_quietly(write, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.Popen([sys.executable, "-m", "tfrec", "-q", "prepare",
                             *prepare_args(write, EVENTS, ITEMS), "--out", str(tmp_path / "o")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # `| head -0`: the report finds the pipe closed
    stderr = proc.communicate(timeout=300)[1].decode()
    assert proc.returncode == 141 and stderr == ""


def test_unknown_subcommand_and_help(capsys):
    assert run_cli("nonsense").returncode == 2
    # A flag the command does not know is named, not a required flag the line lacks.
    for argv, named in ((["export", "--bogus"], "unrecognized arguments: --bogus"),
                        (["serve", "--bogus"], "unrecognized arguments: --bogus"),
                        (["export"], "the following arguments are required: --model-dir")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and named in capsys.readouterr().err
    result = run_cli("prepare", "--help")
    assert result.returncode == 0 and "--config" in result.stdout and "--set" in result.stdout
    assert "sections data, model, train, ranking" in " ".join(result.stdout.split())
    # -q and --verbose also after the command, and said so in its help.
    assert "-q, --quiet" in result.stdout and "--verbose" in result.stdout
    parser = build_parser()
    for argv, quiet, verbose in ((["train", "-q"], True, False), (["-q", "train"], True, False),
                                 (["prepare", "--verbose"], False, True),
                                 (["train"], False, False)):
        args = parser.parse_args(argv)
        assert (args.quiet, args.verbose) == (quiet, verbose), argv


def test_flag_help_shows_zero_defaults_and_what_a_no_flag_does():
    from tfrec.cli import _flag_help
    from tfrec.config import setting_of

    assert _flag_help(setting_of("serve.model_config_file_poll_wait_seconds")).endswith(
        "(default: 0.0)")
    assert _flag_help(setting_of("serve.tensorflow_inter_op_parallelism")).endswith(
        "(default: 0)")
    assert _flag_help(setting_of("export.ranking_stage")).startswith(
        "sets export.ranking_stage to false (the setting: serve the run's ranking stage")
    assert "(default" not in _flag_help(setting_of("export.no_serving_config"))


def test_errors_name_the_setting_with_its_flag_or_how_to_set_it():
    from tfrec.cli import error_message
    from tfrec.errors import InputError
    from tfrec.index import IndexConfig

    with pytest.raises(InputError) as err:
        IndexConfig(max_k=100, num_reordering_candidates=300)
    text = error_message(err.value)
    assert text.startswith("setting 'index.num_reordering_candidates' (--reorder): ")
    assert "lower index.max_k (--max-k) / index.max_session_items (--max-session-items)" in text
    assert "--reorder" not in err.value.message  # the library names settings, not flags
    assert error_message(InputError("must be positive", key="data.pairs.window")).endswith(
        "(set it in the run config, or with --set data.pairs.window=VALUE)")
    assert error_message(InputError("bad", key="train.strategy")) == (
        "setting 'train.strategy' (--strategy): bad")


def test_evaluate_data_dir_goes_through_the_config(tmp_path, monkeypatch, capsys):
    from tfrec.config import RunConfig
    from tfrec.datasets import DATA_ENV
    from tfrec.run import with_data_dir

    monkeypatch.delenv(DATA_ENV, raising=False)
    assert main(["evaluate", "--run", str(tmp_path), "--data-dir", "elsewhere"]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert DATA_ENV not in os.environ
    config = with_data_dir(RunConfig(), "elsewhere")
    assert config.data.data_dir == str(Path("elsewhere").resolve())
    named = with_data_dir(config, "other")  # a config naming its own folder keeps it
    assert named.data.data_dir == str(Path("elsewhere").resolve())


@pytest.mark.parametrize("command", ["prepare", "train"])
def test_an_unknown_negative_sampler_is_refused_before_any_data_is_read(
        tmp_path, capsys, command):
    missing = tmp_path / "no-such-events.csv"
    args = [command, "--set", "data.layout=events", "--set", f"data.events={missing}",
            "--set", "model.negatives=nearest"]
    if command == "train":
        args += ["--run-dir", str(tmp_path / "run")]
    assert main(["-q", *args]) == 2
    err = capsys.readouterr().err
    assert "setting 'model.negatives'" in err and "'nearest'" in err
    assert "'in_batch'" in err  # the registered names are listed
    assert "not found" not in err  # the events file was never looked for
    assert not (tmp_path / "run").exists()
    # With a sampler that exists, the same arguments fail on the data.
    args[args.index("model.negatives=nearest")] = "model.negatives=mixed"
    assert main(["-q", *args]) == 2
    assert "events file not found" in capsys.readouterr().err


def test_ctrl_c_is_interrupted_even_when_a_library_turns_it_into_another_error(
        monkeypatch, capsys):
    import dataclasses
    import os
    import signal

    from tfrec import cli

    def cut_short(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 5)  # the handler runs at once; never 5 s
        except KeyboardInterrupt:  # a C extension swallows it and fails its own way
            raise SystemError("bad argument to internal function") from None
        return 0

    def train_runs(run):
        return tuple(dataclasses.replace(c, run=run) if c.name == "train" else c
                     for c in cli.SUBCOMMANDS)

    monkeypatch.setattr(cli, "SUBCOMMANDS", train_runs(cut_short))
    # (pytest-xdist's workers ignore SIGINT: the default handler, as a terminal's process.)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert cli.main(["-q", "train", "--run-dir", "x"]) == 130
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    finally:
        signal.signal(signal.SIGINT, previous)
    assert capsys.readouterr().err == ("tfrec: interrupted (tfrec train --resume continues the "
                                       "run from its last checkpoint)\n")

    # SIGTERM (a scheduler's stop, `kill`): the same clean stop, exit 143, named.
    cleaned = []

    def terminated(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises in here
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # a second one does not cut the clean-up
            time.sleep(0.1)
            cleaned.append(True)
        return 0

    monkeypatch.setattr(cli, "SUBCOMMANDS", train_runs(terminated))
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        assert cli.main(["-q", "train", "--run-dir", "x"]) == 143
        assert cleaned == [True]
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert capsys.readouterr().err == ("tfrec: terminated (SIGTERM) (tfrec train --resume "
                                       "continues the run from its last checkpoint)\n")

    # A job whose SIGINT is ignored (started in the background) keeps ignoring it.
    seen = []
    monkeypatch.setattr(cli, "SUBCOMMANDS", train_runs(
        lambda args: seen.append(signal.getsignal(signal.SIGINT)) or 0))
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert cli.main(["-q", "train", "--run-dir", "x"]) == 0
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == [signal.SIG_IGN]

    def fails(args):
        raise SystemError("a real bug")

    monkeypatch.setattr(cli, "SUBCOMMANDS", train_runs(fails))
    with pytest.raises(SystemError, match="a real bug"):
        cli.main(["-q", "train", "--run-dir", "x"])


def test_the_held_out_table_shows_a_dash_where_there_are_no_cases():
    from tfrec.training import format_evaluation

    rows = {name: {"cases": cases, "hr@10": hr, "ndcg@10": hr}
            for name, cases, hr in (("all", 5, 0.2), ("warm", 5, 0.2), ("cold", 0, float("nan")))}
    stage1 = {name: {"hr@10": 0.1, "ndcg@10": 0.1} for name in ("all", "warm")}
    stage1["cold"] = {"hr@10": float("nan"), "ndcg@10": float("nan")}
    table = format_evaluation({**rows, "stage1": stage1}, 10).splitlines()
    assert table[3].split() == ["cold", "0", "-", "-", "-", "-"]
    assert table[1].split() == ["all", "5", "0.2000", "0.2000", "0.1000", "0.1000"]
