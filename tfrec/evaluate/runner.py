"""`tfrec evaluate`: the model and the baselines on the same held-out cases.

The protocol is the run's own (its config's data, split and seed; see
`protocol`): every method ranks the whole catalogue for every case, the
query's own items excluded, and is scored on all, warm and cold targets.
The report folder (`tfrec.run_folder.ReportFolder`) gets the report as JSON, a
self-contained HTML page (plots embedded) and the plots as PNG files.
The baselines are the objects of `methods.REGISTRY`: each is fit on the run's
data and ranks the same cases. A run with a ranking stage is scored with both
stages, beside stage 1 alone, the ranker without each feature group and the
candidate lists' recall (`stages`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from tfrec.data.sequences import histories_from_lists
from tfrec.config import EvaluateSettings
from tfrec.errors import InputError
from tfrec.evaluate.analyses import (categories_of, cold_start_figures, conversion_ranks,
                                     index_recall)
from tfrec.data.split import cases_fingerprint
from tfrec.evaluate.bar import check_bar
from tfrec.evaluate.noise import paired_interval, per_case
from tfrec.evaluate.exported import ExportedModel, run_of_export
from tfrec.exporter.layout import VersionFolder
from tfrec.evaluate import stages as stages_lib
from tfrec.evaluate.methods import (MAX_K, MODEL, REGISTRY, SERVED, STAGE1, TWO_STAGE_LABEL,
                                    BaselineSettings, EvaluationRun, ablation_name,
                                    baseline_names, is_model_row, label_of)
from tfrec.evaluate.report import write_report
from tfrec.metrics import hit_rate, rank_targets, score_cases
from tfrec.ranking import features as F
from tfrec.ranking.two_stage import load_stage
from tfrec.run import check_run_data, load_run, prepare_training_data, with_data_dir
from tfrec.run_folder import RunFolder

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class MethodResult:
    name: str
    ranks: np.ndarray
    seconds: float
    note: str = ""
    tuning: dict | None = None
    label: str | None = None
    list_width: int | None = None
    extra: dict | None = None


def parse_baselines(text: str | None) -> tuple[str, ...]:
    """'all' (default), 'none' or a comma-separated subset of the registered baselines."""
    if text is None or text == "all":
        return baseline_names()
    if text == "none":
        return ()
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))  # once each
    if not names:
        raise InputError(f"no baseline named in {text!r}: give 'all', 'none' or names from "
                         f"{', '.join(baseline_names())}", key="evaluate.baselines")
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise InputError(f"unknown baseline(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(baseline_names())}, 'all' or 'none'",
                         key="evaluate.baselines")
    return names


def scores_of(ranks: np.ndarray, cases, k: int, list_width: int | None = None) -> dict:
    """`protocol.score_cases` per group plus HR@1..MAX_K curves; a group
    without cases is null (strict JSON), not NaN.

    Args:
      list_width: N for a method that ranks a list of N candidates (a target
        outside it ranked beyond any K): its curve stops at K = N.
    """
    out = score_cases(ranks, cases, k)
    out.pop("unknown_targets")
    top = MAX_K if list_width is None else min(MAX_K, list_width)
    for group, mask in (("all", np.ones(len(ranks), bool)), ("warm", ~cases.cold),
                        ("cold", cases.cold)):
        if not mask.any():
            out[group].update({f"hr@{k}": None, f"ndcg@{k}": None, "hr_curve": []})
        else:
            out[group]["hr_curve"] = [hit_rate(ranks[mask], kk) for kk in range(1, top + 1)]
    if list_width is not None:
        out["list_width"] = list_width
    return out


class Step:
    """Numbered progress lines ('[3/9] popularity'); a call returns the time."""

    def __init__(self, total: int):
        self.total = total
        self.done = 0

    def __call__(self, text: str):
        self.done += 1
        logger.info("[%d/%d] %s", self.done, self.total, text)
        return time.perf_counter()


def same_cases_as_trained(run_dir: Path, cases, source: str) -> bool | None:
    """Whether the held-out cases read now are those the run's last training had
    (`provenance.json`'s fingerprint; None: the run records none). Other cases mean
    the data changed since (the vocabulary check sees only the item ids): logged."""
    trainings = RunFolder(run_dir).read_provenance()
    recorded = trainings[-1].get("data", {}).get("cases_sha256") if trainings else None
    if recorded is None:
        return None
    if recorded == cases_fingerprint(cases):
        return True
    was = trainings[-1]["data"]
    logger.warning("the data read now (%s) gives other held-out cases than the run trained "
                   "with (%s cases then from %s, %s now): the data changed since, so these "
                   "figures are not the run's own protocol", source, f"{was.get('cases'):,}",
                   was.get("source"), f"{len(cases):,}")
    return False


def refuse_stage_changed_since(saved_model: Path, run_dir: Path) -> None:
    """Refuses an export whose ranking stage is not the run's as it is now (the run was
    retrained, or its stage refitted, since the export): its stage rows would score the
    export's two-tower under another ranker, a model that never existed."""
    from tfrec.ranking.two_stage import stage_fingerprint

    meta = VersionFolder(saved_model).read_metadata(missing_ok=True)
    recorded = (meta.get("ranking_stage") or {}).get("fingerprint")
    made_from = meta.get("run")
    if not made_from or Path(made_from).resolve() != run_dir.resolve():
        return  # another run's export: `warn_if_another_run` says so
    if recorded and recorded != stage_fingerprint(run_dir):
        raise InputError(
            f"the run's ranking stage is not the one this export serves: {run_dir} was "
            "retrained or its stage refitted (tfrec train --resume) since the export, so "
            "the export's two-tower under the run's ranker is a model that never existed; "
            f"evaluate the run itself (--run {run_dir}), or export it anew and evaluate "
            "that version", path=str(saved_model), key="evaluate.saved_model")


def refuse_final_export(saved_model: Path, run_dir: Path) -> None:
    """Refuses an export of a final model (`tfrec train --final-from`) scored on a run's
    cases: it trained on every event, those cases included, so its figures would measure
    nothing (they would read as a better model)."""
    try:
        meta = VersionFolder(saved_model).read_metadata(missing_ok=True)
    except InputError:
        return
    evaluated = (meta.get("evaluated_as") or {}).get("run")
    # (`exporter.saved_model.evaluation_metadata`: every export names what it was
    # evaluated as; a final model's says it trained on every event.)
    if evaluated and str(meta.get("trained_on", "")).startswith("every event"):
        raise InputError(
            f"the export is of a final model (tfrec train --final-from {evaluated}): it "
            f"trained on every event, the held-out cases of {run_dir} included, so its "
            "figures would not measure it; evaluate the evaluated run "
            f"(--run {evaluated}) or an export of that run", path=str(saved_model),
            key="evaluate.saved_model")


def warn_if_another_run(saved_model: Path, run_dir: Path) -> str | None:
    """A warning (logged, and returned) when the export names a run other than `run_dir`:
    its embeddings are then scored on another run's cases, with the other run's ranking
    stage, and may have trained on events this run holds out."""
    try:
        made_from = VersionFolder(saved_model).read_metadata(missing_ok=True).get("run")
    except InputError:
        return None
    if not made_from or Path(made_from).resolve() == run_dir.resolve():
        return None
    message = (f"the export {saved_model} was made from the run {made_from}, not from "
               f"{run_dir}: it is scored on this run's cases with this run's ranking stage, "
               "and may have trained on events this run holds out")
    logger.warning("%s", message)
    return message


def evaluate_run(run_dir: str | Path | None, out_dir: str | Path | None = None,
                 baselines: tuple[str, ...] | None = None, k: int | None = None,
                 targets: dict | None = None,
                 gensim_epochs: int = EvaluateSettings.gensim_epochs,
                 gensim_dim: int = EvaluateSettings.gensim_dim,
                 saved_model: str | Path | None = None,
                 max_item_item_catalogue: int = EvaluateSettings.max_item_item_catalogue,
                 data_dir: str | Path | None = None,
                 ablations: bool = not EvaluateSettings.no_ablations) -> dict:
    """Evaluates a run and the baselines; writes the report, its page and its plots.

    Args:
      run_dir: a `tfrec train` run folder (with `saved_model`, default: the
        run the export names in its metadata).
      saved_model: evaluate this exported version (its cached item
        embeddings, query signature and index) instead of the run's
        checkpoint; the run still defines the data, split and cases.
      out_dir: report folder (default RUN_DIR/evaluation).
      baselines: the registered baselines to run beside the model (`methods.REGISTRY`;
        default: all of them).
      k: the K of HR@K / NDCG@K in the table (default: the run's eval_k).
      targets: HR@k per group ("all", "warm", "cold") the model must reach
        (default: none; the other checks compare the model with the baselines).
      gensim_epochs: passes of the gensim item2vec baseline.
      gensim_dim: its vector size (the default is the best measured: on the
        bundled data it scored HR@10 0.160 at 64, 0.119 at 128 and 0.085 at 256).
      max_item_item_catalogue: EASE and ItemKNN run up to this many catalogue
        items (an n x n matrix each); above it they are skipped, with the
        reason in the log, the table and the report.
      data_dir: the data folder to read the run's data set from, when the
        run's config names no `data.data_dir`.
      ablations: with a ranking stage, also refit the ranker without each
        feature group (one ranker fit each) and score it.

    Returns:
      The report (as written to the report folder).
    """
    started = time.perf_counter()
    if saved_model is not None and run_dir is None:
        run_dir = run_of_export(Path(saved_model))
    elif saved_model is not None:
        warn_if_another_run(Path(saved_model), Path(run_dir))
    if run_dir is None:
        raise InputError("give a run folder with evaluate.run_dir or an exported version "
                         "with evaluate.saved_model", key="evaluate.run_dir")
    run_dir = Path(run_dir)
    if out_dir and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise InputError("the report folder is a file, expected a folder", path=str(out_dir),
                         key="evaluate.out")
    evaluated_as = RunFolder(run_dir).read_evaluated_as()
    if evaluated_as is not None:
        # A final model trained on every event: it has no held-out case to score.
        evaluated = evaluated_as.get("run", "its evaluated run")
        raise InputError(f"the run is a final model (tfrec train --final-from {evaluated}): it "
                         "trained on every event and holds none out; evaluate the evaluated "
                         f"run (--run {evaluated}, or an export of it with --saved-model)",
                         path=str(run_dir), key="evaluate.run_dir")
    if saved_model is not None:
        refuse_final_export(Path(saved_model), run_dir)
    config, run_vocab, model, checkpoint = load_run(run_dir)
    trained = len(RunFolder(run_dir).read_history())
    if trained < config.train.epochs:
        epochs = config.train.epochs
        raise InputError(f"the run has finished {trained} of its {epochs} "
                         f"epoch{'' if epochs == 1 else 's'} (still training, or stopped): its "
                         "checkpoint is not the run's model; finish it "
                         f"with tfrec train --run-dir {run_dir} --resume",
                         path=str(run_dir), key="evaluate.run_dir")
    run_model = model
    config = with_data_dir(config, data_dir)
    k = k or config.train.eval_k
    if k < 1 or k > MAX_K:
        raise InputError(f"k must be between 1 and {MAX_K}, got {k}", key="evaluate.k")
    baselines = baseline_names() if baselines is None else tuple(baselines)
    unknown = [name for name in baselines if name not in REGISTRY]
    if unknown:
        raise InputError(f"unknown baseline(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(baseline_names())}", key="evaluate.baselines")
    out_dir = Path(out_dir) if out_dir else RunFolder(run_dir).evaluation.path
    stage = load_stage(run_dir, model)
    ablated = stages_lib.ablation_columns(stage) if stage is not None and ablations else {}
    # A two-stage export is also scored as served (its serving_default on the cases).
    served_row = saved_model is not None and "ranker" in VersionFolder(
        saved_model).read_metadata(missing_ok=True).get("stages", [])
    step = Step(5 + len(baselines) + (stage is not None) + (len(ablated) + 1 if ablated else 0)
                + served_row)

    step("preparing the held-out cases (the run's data and split)")
    data = prepare_training_data(config)
    check_run_data(data.vocab, run_vocab, run_dir, data.rejections)
    cases = data.cases
    if len(cases) == 0:
        raise InputError("no evaluation cases: no held-out session has two distinct items "
                         "(set train.split_date or train.split_fraction)")
    data_matches = same_cases_as_trained(run_dir, cases, data.source)
    vocab = data.vocab
    valid = np.ones(vocab.size, dtype=bool)
    valid[0] = False
    results: dict[str, MethodResult] = {}
    skipped: dict[str, str] = {}

    exported = None
    if saved_model is not None and stage is not None:
        refuse_stage_changed_since(Path(saved_model), run_dir)
    if saved_model is not None:
        exported = ExportedModel(Path(saved_model), vocab)
        model, checkpoint = exported, str(Path(saved_model).resolve())
        if stage is not None:
            stage.tables.item_embeddings = model.item_embeddings()
    source = f"export {saved_model}" if exported else f"checkpoint {Path(checkpoint).name}"
    t0 = step(f"{label_of(STAGE1 if stage is not None else MODEL)}: ranking {len(cases):,} "
              f"cases over {vocab.size - 1:,} items" + (f" ({source})" if exported else ""))
    ranks, item_emb, query_emb = rank_targets(model, cases.queries, cases.targets,
                                              config.model.history_length)
    stage1_ranks = ranks
    ranking_stage = stage_top = None
    if stage is None:
        results[MODEL] = MethodResult(MODEL, ranks, time.perf_counter() - t0, source)
    else:
        stage1 = MethodResult(STAGE1, ranks, time.perf_counter() - t0,
                              f"{source}, the two-tower alone")
        ranking_stage, stage_results, stage_top = _stage_rows(
            stage, config, data, run_model, query_emb, cases, ablated, source, step, k)
        results[MODEL] = stage_results.pop(MODEL)
        results[MODEL].seconds += stage1.seconds  # both stages' time
        results[STAGE1] = stage1
        results.update(stage_results)

    run = EvaluationRun(run_dir, config, data, k,
                        BaselineSettings(gensim_epochs, gensim_dim, max_item_item_catalogue),
                        step)
    for name in baselines:
        baseline = REGISTRY[name]
        reason = baseline.skip_reason(run)
        if reason:
            step(f"{baseline.label}: {reason}")
            skipped[name] = reason
            continue
        t0 = step(baseline.describe(run))
        fitted = baseline.fit(run)
        results[name] = MethodResult(name, baseline.rank(fitted, run),
                                     time.perf_counter() - t0, tuning=fitted.tuning)

    if exported is not None and exported.two_stage:
        t0 = step(f"{label_of(SERVED)}: {len(cases):,} cases")
        served, width = exported.served_ranks(cases.queries, cases.targets, MAX_K)
        results[SERVED] = MethodResult(SERVED, served, time.perf_counter() - t0,
                                       "the export's signature, both stages as served",
                                       list_width=width)
        step("index recall: as the export measured it against exact search")
        recall = exported.recorded_recall()
    elif exported is not None:
        step("index recall: the export's serving_default against exact search")
        recall = exported.index_recall(
            histories_from_lists(cases.queries, config.model.history_length), query_emb)
    else:
        step("index recall: ScaNN (export settings) against exact search")
        recall = index_recall(item_emb, query_emb)
    conversion = conversion_ranks(data.test_slice, vocab, model, config.model.history_length,
                                  config.data.sessions, item_emb)
    step("cold start: warm targets as if new, and the cold items' share of the top slots")
    cold_start = cold_start_figures(model, vocab, cases, stage1_ranks, item_emb, query_emb,
                                    valid, k, stage_top=stage_top)

    methods = {name: {"label": res.label or label_of(name), "seconds": round(res.seconds, 1),
                      **({"note": res.note} if res.note else {}),
                      **({"tuning": res.tuning} if res.tuning else {}),
                      **(res.extra or {}),
                      **scores_of(res.ranks, cases, k, res.list_width)}
               for name, res in results.items()}
    paired = _paired(results, cases)
    against_model(methods, paired, k)
    report = {
        "run": str(run_dir.resolve()), "checkpoint": str(Path(checkpoint).resolve()), "k": k,
        "protocol": {"data": config.data.layout,
                     "events": config.data.events or "data folder",
                     "split_by": config.train.split_by,
                     "split_date": config.train.split_date,
                     "split_fraction": None if config.train.split_date else
                     config.train.split_fraction,
                     "holdout_users": config.train.holdout_users
                     if config.train.split_by == "user" else None,
                     "cold_items": config.train.cold_items,
                     "retrieval_context": data.retrieval_context,
                     "eval_seed": config.train.eval_seed, "cases": len(cases),
                     "data_matches_run": data_matches,
                     "warm_cases": int((~cases.cold).sum()), "cold_cases": int(cases.cold.sum()),
                     "unknown_targets": cases.unknown_targets,
                     "candidates": int(vocab.size - 1), "train_events": data.train_events,
                     "test_events": data.test_events},
        "methods": methods,
        "skipped": {name: {"label": label_of(name), "reason": reason}
                    for name, reason in skipped.items()},
        "index_recall": recall,
        "conversion": conversion,
        "cold_start": cold_start,
        **({"ranking_stage": ranking_stage} if ranking_stage is not None else {}),
        "checks": check_bar(methods, k, targets, paired=paired),
        "seconds": round(time.perf_counter() - started, 1),
    }
    step(f"writing the report to {out_dir}")
    codes, names = categories_of(vocab)
    write_report(report, out_dir, item_emb[1:], codes[1:], names, cold=vocab.counts[1:] == 0)
    return report


def _paired(results: dict, cases):
    """paired(a, b, group, metric) -> the `noise.Interval` of methods a - b on the group's
    cases (users resampled when the cases know their users); b a method's name or a
    number (a target every case is held to)."""
    groups = {"all": np.ones(len(cases), bool), "warm": ~cases.cold, "cold": cases.cold}

    def paired(a: str, b, group: str, metric: str):
        mask = groups[group]
        users = None if cases.users is None else cases.users[mask]
        mine = per_case(results[a].ranks[mask], metric)
        other = (np.full(len(mine), float(b)) if isinstance(b, (int, float))
                 else per_case(results[b].ranks[mask], metric))
        return paired_interval(mine, other, users)

    return paired


def against_model(methods: dict, paired, k: int) -> None:
    """Each of the model's own other rows (stage 1 alone, the ablations) gets its
    difference to the model, with the 95% interval (`paired`), per group, at HR@k
    and NDCG@k ("vs_model"): what an ablation costs, and how sure that is."""
    for name, method in methods.items():
        if name == MODEL or not is_model_row(name):
            continue
        method["vs_model"] = {
            group: {metric: interval.as_dict() for metric in (f"hr@{k}", f"ndcg@{k}")
                    if (interval := paired(name, MODEL, group, metric)) is not None}
            for group in ("all", "warm", "cold") if methods[MODEL][group].get("cases")}


def _stage_rows(stage, config, data, run_model, query_emb: np.ndarray, cases,
                ablated: dict, source: str, step: Step, k: int) -> tuple[dict, dict, np.ndarray]:
    """The rows of a run with a ranking stage: both stages (under `MODEL`) and the
    ranker without each group of `ablated`; the report's "ranking_stage" entry
    (the stage's settings and its candidate lists' recall); and both stages' top `k`
    items of each case.

    Args:
      stage: the run's `RankingStage`.
      run_model: the run's two-tower (its checkpoint: the ablations' lists).
      query_emb: the cases' query embeddings (of the model evaluated).
      ablated: `stages.ablation_columns` (empty: no ablations).
      source: the model's source, in words (the rows' note).
    """
    width = stage.width
    t0 = step(f"{TWO_STAGE_LABEL}: the ranker over each case's {width} candidates")
    lists = stages_lib.StageLists.of(stage, query_emb, cases)
    scores = lists.scores(stage.ranker, stage.columns)
    rows = {MODEL: MethodResult(
        MODEL, lists.ranks(stage.ranker, stage.columns, scores), time.perf_counter() - t0,
        f"{source}, the ranking stage over {width} candidates", label=TWO_STAGE_LABEL,
        list_width=width)}
    recall = stages_lib.candidate_recall(stage, query_emb, cases, lists)
    found = stages_lib.ablations(config, data, run_model, stage, lists, step) if ablated else []
    for ablation in found:
        left_out = [F.FEATURES[j] for j in stage.columns if j not in ablation.columns]
        rows[ablation_name(ablation.group)] = MethodResult(
            ablation_name(ablation.group), ablation.ranks, ablation.seconds,
            f"the ranker refitted without {', '.join(left_out)}", list_width=width,
            extra={"left_out": left_out, **ablation.info})
    entry = {"num_candidates": stage.num_candidates, "text_slots": stage.text_slots,
             "table_share": stage.table_share, "new_slots": stage.new_slots,
             "features": [F.FEATURES[j] for j in stage.columns],
             "ablations": bool(ablated), "candidate_recall": recall}
    return entry, rows, lists.top_items(scores, k)
