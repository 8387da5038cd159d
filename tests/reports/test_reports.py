"""Ranking, renderers and `hpo report` files on studies built with create_trial (nothing is trained)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from cifar_hpo.reports.evaluation import EvalRun, eval_attr_key, evaluate_predictions, format_report_text, stored_runs, summarize
from cifar_hpo.reports.ranking import build_ranking, rank_by_test, rank_trials, separation, top_rows
from cifar_hpo.storage.counting import count_frozen_trials
from cifar_hpo.reports.render import ReportMeta, class_table, ranking_csv, report_blocks, to_html, to_markdown
from cifar_hpo.search.cli import main
from cifar_hpo.search.models.data import CLASS_NAMES
from cifar_hpo.search.settings import StudySettings
from cifar_hpo.storage.names import safe_filename
from hpo_testkit import SMALL_CNN, make_study, make_trial, sqlite_url, store_fake_evaluation

SETTINGS = StudySettings(space="cnn", data="/nowhere/cifar.npz", data_fingerprint="abc123", val_size=100, epochs=3)


def memory_study(n_complete: int = 5) -> optuna.Study:
    return make_study(optuna.storages.InMemoryStorage(), "s", SETTINGS, n_complete=n_complete)


def test_rank_trials_orders_by_validation_and_counts_gain_over_baseline() -> None:
    trials = memory_study().get_trials()
    rows = rank_trials(trials)
    values = [r.val_accuracy for r in rows]
    assert values == sorted(values, reverse=True)
    assert [r.rank for r in rows] == list(range(1, len(rows) + 1))
    assert len(rows) == 6  # baseline + 5 completed; pruned and failed are not ranked
    baseline = [r for r in rows if r.baseline]
    assert len(baseline) == 1 and baseline[0].val_accuracy == pytest.approx(0.45)
    for row in rows:
        assert row.gain_vs_baseline == pytest.approx(row.val_accuracy - 0.45)
    assert rows[0].best_epoch == 3 and rows[0].params["depth"] == 2 and rows[0].n_params == 1003
    counts = count_frozen_trials(trials)
    assert (counts.complete, counts.pruned, counts.failed) == (6, 1, 1)


def test_top_rows_keep_the_baseline_even_when_it_ranks_low() -> None:
    study = optuna.create_study(direction="maximize")
    study.add_trial(make_trial(dict(SMALL_CNN), [0.1], baseline=True))
    for value in (0.5, 0.6, 0.7):
        study.add_trial(make_trial(dict(SMALL_CNN, dense_units=int(1000 * value)), [value]))
    rows = rank_trials(study.get_trials())
    shown = top_rows(rows, 2)
    assert [r.val_accuracy for r in shown] == [0.7, 0.6, 0.1]
    assert shown[-1].baseline


def test_pruned_baseline_is_reported_without_rank() -> None:
    study = optuna.create_study(direction="maximize")
    study.add_trial(make_trial(dict(SMALL_CNN), [0.2, 0.25], state=TrialState.PRUNED, baseline=True))
    study.add_trial(make_trial(dict(SMALL_CNN, dense_units=90), [0.5]))
    ranking = build_ranking("s", "cnn", {}, study.get_trials())
    assert ranking.baseline is not None and ranking.baseline.rank is None
    assert ranking.baseline.val_accuracy == pytest.approx(0.25)
    assert ranking.rows[0].gain_vs_baseline is None  # no completed baseline to compare with
    text = to_markdown(report_blocks([ranking], ReportMeta(class_names=list(CLASS_NAMES))))
    assert "(pruned) | trial 0 (baseline)" in text


def test_evaluation_summary_and_report_layout() -> None:
    study = memory_study()
    runs = [store_fake_evaluation(study, "t1", 1, 3, seed, accuracy) for seed, accuracy in ((0, 0.6), (1, 0.8))]
    summary = summarize(runs)
    assert summary.mean == pytest.approx((runs[0].accuracy + runs[1].accuracy) / 2)
    assert summary.std > 0 and summary.seeds == 2
    assert set(CLASS_NAMES) <= set(summary.report)
    assert sum(map(sum, summary.confusion)) == 2000  # summed over both seeds
    text = format_report_text(summary.report, CLASS_NAMES)
    assert all(name in text for name in CLASS_NAMES) and "macro avg" in text and "weighted avg" in text
    table = class_table(summary.report, CLASS_NAMES)
    assert [row[0] for row in table.rows] == [*CLASS_NAMES, "accuracy", "macro avg", "weighted avg"]


def test_evaluate_predictions_matches_scikit_learn_text_report() -> None:
    from sklearn.metrics import classification_report

    y_true = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    y_pred = [0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 2]
    accuracy, report, confusion = evaluate_predictions(y_true, y_pred, CLASS_NAMES)
    assert accuracy == pytest.approx(10 / 12)
    assert report["truck"]["recall"] == 0.0 and confusion[9][0] == 1
    expected = classification_report(y_true, y_pred, target_names=list(CLASS_NAMES), digits=4, zero_division=0)
    ours = format_report_text(report, CLASS_NAMES)
    assert [line.split() for line in ours.splitlines() if line.strip()] == \
           [line.split() for line in expected.splitlines() if line.strip()]


def test_stored_runs_ignore_other_data_and_missing_seeds() -> None:
    study = memory_study()
    store_fake_evaluation(study, "t2", 2, 3, 0, 0.5, fingerprint="abc123")
    store_fake_evaluation(study, "t2", 2, 3, 1, 0.5, fingerprint="other")
    found = stored_runs(study.user_attrs, "t2", 3, [0, 1, 2], "abc123")
    assert list(found) == [0]
    assert eval_attr_key("t2", 3, 0) in study.user_attrs
    assert EvalRun.from_dict(study.user_attrs[eval_attr_key("t2", 3, 0)]).accuracy == found[0].accuracy


def test_test_ranking_and_separation() -> None:
    study = memory_study()
    rows = rank_trials(study.get_trials())
    summaries = {
        "t0": summarize([store_fake_evaluation(study, "t0", 0, 3, s, 0.3, baseline=True) for s in (0, 1, 2)]),
        "t3": summarize([store_fake_evaluation(study, "t3", 3, 3, s, 0.9) for s in (0, 1, 2)]),
        "t4": summarize([store_fake_evaluation(study, "t4", 4, 3, s, 0.88) for s in (0, 1, 2)]),
    }
    test_rows = rank_by_test(summaries, rows)
    assert [t.key for t in test_rows] == ["t3", "t4", "t0"]
    assert test_rows[-1].gain_vs_baseline == 0.0 and test_rows[0].gain_vs_baseline > 0.4
    sep = separation(test_rows)
    assert sep is not None and sep.gap == pytest.approx(test_rows[0].mean - test_rows[1].mean)
    assert sep.distinct == (sep.gap > test_rows[0].std + test_rows[1].std)
    assert "differ" in sep.sentence()


def test_csv_has_every_trial_and_parameter() -> None:
    ranking = build_ranking("s", "cnn", {}, memory_study().get_trials())
    rows = list(csv.DictReader(io.StringIO(ranking_csv([ranking]))))
    assert len(rows) == 8  # 6 complete + 1 pruned + 1 failed
    assert [r["state"] for r in rows[:6]] == ["COMPLETE"] * 6 and rows[0]["rank"] == "1"
    assert {r["state"] for r in rows[6:]} == {"PRUNED", "FAIL"} and rows[6]["rank"] == ""
    assert all(name in rows[0] for name in SMALL_CNN)
    assert sum(r["baseline"] == "True" for r in rows) == 1


def test_html_is_self_contained() -> None:
    ranking = build_ranking("s", "cnn", {}, memory_study().get_trials())
    ranking.plots["A plot"] = "a.png"
    page = to_html(report_blocks([ranking], ReportMeta(class_names=list(CLASS_NAMES))), {"a.png": b"\x89PNG fake"})
    assert 'src="data:image/png;base64,' in page and "a.png" not in page.split("<body>")[1].split("src=")[1][:20]
    assert "<table>" in page and "trial 0 (baseline)" in page


def test_hpo_report_writes_every_file_and_reuses_stored_evaluations(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    study = make_study(url, "alpha", SETTINGS, n_complete=12)
    rows = rank_trials(study.get_trials())
    # Evaluations as `--evaluate --top 2 --seeds 2` stores them; this report must use them without training.
    for row in rows[:2]:
        for seed in (0, 1):
            store_fake_evaluation(study, f"t{row.trial}", row.trial, row.best_epoch, seed, 0.7 - 0.1 * seed,
                                  fingerprint="abc123")
    for seed in (0, 1):
        store_fake_evaluation(study, "t0", 0, 3, seed, 0.4, baseline=True, fingerprint="abc123")
    make_study(url, "beta", SETTINGS, n_complete=3, seed=1)
    out = tmp_path / "rep"
    rc = main(["report", "--study", "alpha", "--study", "beta", "--storage", url, "--out", str(out), "--top", "2",
               "--seeds", "2"])
    assert rc == 0
    alpha, beta = safe_filename("alpha"), safe_filename("beta")
    for name in ("report.md", "report.html", "ranking.csv", "ranking.json", "best_config.json",
                 f"{alpha}_optimization_history.png", f"{alpha}_learning_curves.png", f"{alpha}_param_importances.png",
                 f"{alpha}_parallel_coordinates.png", f"{beta}_learning_curves.png"):
        assert (out / name).stat().st_size > 0, name
    confusions = sorted(p.name for p in out.glob(f"{alpha}_confusion_*.png"))
    assert len(confusions) == 3  # top 2 + baseline
    md = (out / "report.md").read_text()
    assert all(f"| {name} |" in md for name in CLASS_NAMES)
    assert "trial 0 (baseline)" in md and "Comparison of studies" in md and "F1 truck" in md
    assert "Test-set evaluation (ranked by test mean)" in md and "than their spread" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(list(out.glob("*.png")))
    data = json.loads((out / "ranking.json").read_text())
    alpha = data["studies"][0]
    assert alpha["counts"] == {"complete": 13, "pruned": 1, "infeasible": 0, "failed": 1, "running": 0, "waiting": 0}
    assert alpha["baseline"]["trial"] == 0 and len(alpha["ranking"]) == 13
    assert len(alpha["test_ranking"]) == 3 and alpha["test_ranking"][0]["seeds"] == [0, 1]
    means = [t["test_accuracy_mean"] for t in alpha["test_ranking"]]
    assert means == sorted(means, reverse=True)
    best = json.loads((out / "best_config.json").read_text())
    assert best["source"]["trial"] == rows[0].trial and best["format_version"] == 1
    assert (out / f"best_config_{beta}.json").exists()


def test_report_file_names_are_visible_and_distinct_per_study(tmp_path: Path) -> None:
    """A name starting with a dot made hidden PNGs; every all-non-ASCII name made the same study_*.png."""
    url = sqlite_url(tmp_path)
    names = [".hidden", "日本", "中文"]
    for i, name in enumerate(names):
        make_study(url, name, SETTINGS, n_complete=0, seed=i)
    out = tmp_path / "rep"
    argv = ["report", "--storage", url, "--out", str(out)]
    assert main([*argv, *[arg for name in names for arg in ("--study", name)]]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert not [name for name in written if name.startswith(".")]
    curves = [name for name in written if name.endswith("_learning_curves.png")]
    assert len(curves) == len(names)  # one per study, none overwritten by another
    assert len([name for name in written if name.startswith("best_config_")]) == len(names)
    md = (out / "report.md").read_text()
    assert all(f"]({curve})" in md for curve in curves)


def test_one_report_compares_studies_kept_in_different_storages(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A CNN study in one file and an inception study in another (say, from another machine): one --storage
    per --study, in order; a count that matches neither one nor the studies is a one-line error."""
    cnn_url, inception_url = f"sqlite:///{tmp_path / 'cnn.db'}", f"sqlite:///{tmp_path / 'inception.db'}"
    make_study(cnn_url, "cnn", SETTINGS, n_complete=2)
    make_study(inception_url, "inception", dataclasses.replace(SETTINGS, space="inception"), n_complete=2, seed=1)
    out = tmp_path / "rep"
    assert main(["report", "--study", "cnn", "--storage", cnn_url, "--study", "inception", "--storage", inception_url,
                 "--out", str(out)]) == 0
    ranked = json.loads((out / "ranking.json").read_text())
    assert [s["study"] for s in ranked["studies"]] == ["cnn", "inception"]
    assert "Comparison of studies" in (out / "report.md").read_text()
    assert cnn_url.split("///")[1] in (out / "report.md").read_text()
    capsys.readouterr()
    rc = main(["report", "--study", "cnn", "--study", "inception", "--study", "x", "--storage", cnn_url,
               "--storage", inception_url, "--out", str(tmp_path / "r2")])
    err = capsys.readouterr().err
    assert rc == 2 and "one per --study" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r2").exists()


def test_report_on_missing_study_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = sqlite_url(tmp_path)
    make_study(url, "alpha", SETTINGS, n_complete=1)
    rc = main(["report", "--study", "nope", "--storage", url, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "nope" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


PAYLOAD = "<img src=x onerror=alert(1)>"


class _Tags(HTMLParser):
    """Every start tag of an HTML page with its attributes, and the cell count of every table row."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.rows: list[int] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self.rows.append(0)
        elif tag in ("td", "th"):
            self.rows[-1] += 1


def _markdown_tables(md: str) -> list[list[int]]:
    """Cells per row of every Markdown table (a '|' after a backslash is text, not a column)."""
    tables: list[list[int]] = []
    previous = ""
    for line in md.splitlines():
        if line.startswith("|"):
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append(len(re.split(r"(?<!\\)\|", line)) - 2)
        previous = line
    return tables


def test_report_escapes_user_strings_in_markdown_and_html(tmp_path: Path) -> None:
    """Study name, data path, a parameter's value and user attrs holding a tag and a '|' stay text."""
    url = sqlite_url(tmp_path)
    name = f"{PAYLOAD} a|b `tick` *x*"
    study = make_study(url, name, dataclasses.replace(SETTINGS, data=f"/data/{PAYLOAD}|x.npz"), n_complete=2)
    study.add_trial(create_trial(
        value=0.99, params={"note": PAYLOAD}, distributions={"note": CategoricalDistribution((PAYLOAD, "a|b"))},
        user_attrs={"params": "a|b", "train_images_per_s": PAYLOAD, "best_epoch": 1, "epochs_run": 1},
        intermediate_values={1: 0.99}))
    out = tmp_path / "rep"
    assert main(["report", "--study", name, "--storage", url, "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert PAYLOAD not in md and "<img" not in md and "&lt;img src=x onerror=alert(1)&gt;" in md
    assert "a\\|b" in md and "a|b" not in md
    for rows in _markdown_tables(md):
        assert len(set(rows)) == 1, rows  # every row has the header's columns
    page = (out / "report.html").read_text()
    assert PAYLOAD not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    parser = _Tags()
    parser.feed(page)
    assert not [attrs for _, attrs in parser.tags if "onerror" in attrs]
    assert all(attrs["src"].startswith("data:image/png;base64,") for tag, attrs in parser.tags if tag == "img")
    assert "<code>&lt;img src=x onerror=alert(1)&gt; a|b `tick` *x*</code>" in page  # the study name, verbatim


def test_report_without_the_baseline_and_the_summary_names_the_chosen_configurations_test(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = sqlite_url(tmp_path)
    study = make_study(url, "alpha", SETTINGS, n_complete=6)
    rows = rank_trials(study.get_trials())
    # the runner-up scores higher on the test set: the summary must still name the chosen (best validation) one
    chosen = store_fake_evaluation(study, f"t{rows[0].trial}", rows[0].trial, rows[0].best_epoch, 0, 0.5,
                                   fingerprint="abc123")
    runner_up = store_fake_evaluation(study, f"t{rows[1].trial}", rows[1].trial, rows[1].best_epoch, 0, 0.9,
                                      fingerprint="abc123")
    assert runner_up.accuracy > chosen.accuracy
    store_fake_evaluation(study, "t0", 0, 3, 0, 0.4, baseline=True, fingerprint="abc123")
    out = tmp_path / "rep"
    assert main(["report", "--study", "alpha", "--storage", url, "--out", str(out), "--top", "2", "--seeds", "1",
                 "--no-baseline"]) == 0
    tested = json.loads((out / "ranking.json").read_text())["studies"][0]["test_ranking"]
    assert sorted(t["trial"] for t in tested) == sorted([rows[0].trial, rows[1].trial])  # no baseline
    assert f"test accuracy of the chosen configuration {chosen.accuracy:.4f}" in capsys.readouterr().out
