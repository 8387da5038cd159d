"""Renderers: one document model (headings, paragraphs, tables, images, code) written as Markdown or as
self-contained HTML (images embedded as base64), plus the ranking as JSON and CSV.

``report_blocks`` decides what the report says; ``to_markdown``/``to_html`` only decide how it looks, so
both files always carry the same content.

Block text is plain text except for code spans made by ``code()``. Study names, paths, parameter values and
user attrs are anyone's strings (``<img src=x onerror=...>``, ``a|b``), so the renderers escape every piece of
text: HTML with html.escape, Markdown with backslash escapes and entities, so no value becomes markup, a tag,
or an extra table column.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Mapping, Sequence

from cifar_hpo.reports.evaluation import AVERAGES, OWN_MODEL, REPORT_ROWS, format_report_text
from cifar_hpo.reports.ranking import RankedRow, StudyRanking, TestRow, label, param_names

CSV_FIELDS = ("study", "rank", "trial", "state", "baseline", "val_accuracy", "gain_vs_baseline", "best_epoch",
              "epochs_run", "n_params", "fit_seconds", "images_per_s", "wall_seconds", "cache_fill_seconds", "test_accuracy_mean",
              "test_accuracy_std", "test_seeds")
PER_SEED_MEAN_NOTE = (
    "Precision, recall and F1 are each the mean over seeds of that seed's value (F1 is not recomputed from the "
    "averaged precision and recall), so a class's F1 can lie below both its precision and its recall.")
FEW_TRIALS = 10  # below this many completed trials, fANOVA importances are mostly noise


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    align_right_from: int = 1  # columns from this index are numbers


@dataclass(frozen=True)
class Image:
    title: str
    file: str


@dataclass(frozen=True)
class Code:
    text: str


Block = Heading | Paragraph | Table | Image | Code


@dataclass
class ReportMeta:
    title: str = "Hyperparameter search report"
    generated: str = ""
    storage: str = ""
    top_k: int = 5
    class_names: list[str] = field(default_factory=list)
    folder: str = ""  # the report folder as the user named it: file paths in hints work from where they stand


# ---------------------------------------------------------------- formatting helpers
# Code spans are delimited by two private-use characters rather than backticks, so a backtick in a value is
# just text; _segments splits them back out, and stray delimiters inside values are dropped.
_CODE_OPEN, _CODE_CLOSE = "\ue000", "\ue001"


def code(value: Any) -> str:
    """``value`` as a code span of the report's text (rendered as `...` / <code>...</code>)."""
    text = str(value).replace(_CODE_OPEN, "").replace(_CODE_CLOSE, "")
    return f"{_CODE_OPEN}{text}{_CODE_CLOSE}"


def _segments(text: str) -> list[tuple[bool, str]]:
    """``text`` as (is_code, piece) pairs."""
    pieces: list[tuple[bool, str]] = []
    for part in text.split(_CODE_OPEN):
        inner, closed, rest = part.partition(_CODE_CLOSE)
        if closed:
            pieces.append((True, inner))
        else:
            rest = inner
        if rest:
            pieces.append((False, rest.replace(_CODE_CLOSE, "")))
    return pieces


def pct(value: float | None, digits: int = 2) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.{digits}f}%"


def points(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:+.2f} pts"


def plural(n: Any, noun: str) -> str:
    """'1 epoch', '3 epochs'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        return f"{value:.{digits}f}" if abs(value) >= 0.01 or value == 0 else f"{value:.3g}"
    return str(value)


def mean_std(mean: float, std: float) -> str:
    return f"{100 * mean:.2f}% ± {100 * std:.2f}"


def row_label(row: RankedRow) -> str:
    return label(row.trial, row.baseline)


# ---------------------------------------------------------------- the document
def report_blocks(rankings: Sequence[StudyRanking], meta: ReportMeta) -> list[Block]:
    blocks: list[Block] = [Heading(meta.title, 1)]
    studies = ", ".join(f"{code(r.study)} ({r.space})" for r in rankings)
    blocks.append(Paragraph(f"Studies: {studies}. Storage: {code(meta.storage)}. Generated {meta.generated}."))
    if len(rankings) > 1:
        blocks += comparison_blocks(rankings, meta.class_names)
    for ranking in rankings:
        blocks += study_blocks(ranking, meta)
    return blocks


def search_method(r: StudyRanking) -> str:
    """Who chose the trials: Optuna's sampler and pruner, or a KerasTuner tuner (its own pruning)."""
    s = r.settings
    if s.get("engine") == "kerastuner":
        return f"engine KerasTuner, tuner {r.tuner or 'unknown'}"
    return f"engine Optuna, sampler {s.get('sampler')}, pruner {s.get('pruner')}"


def study_blocks(r: StudyRanking, meta: ReportMeta) -> list[Block]:
    s, c = r.settings, r.counts
    blocks: list[Block] = [Heading(f"Study {code(r.study)} (space {code(r.space)})", 2)]
    data = s.get("data") or "keras.datasets.cifar10"
    blocks.append(Paragraph(
        f"Data {code(data)} (fingerprint {code(s.get('data_fingerprint'))}), validation {s.get('val_size')} images, "
        f"training subset {s.get('subset') or 'all'}, up to {plural(s.get('epochs'), 'epoch')}, seed {s.get('seed')}, "
        f"precision {s.get('precision') or 'float32'}, {search_method(r)}."))
    blocks.append(Paragraph(
        f"Trials: {c.complete} complete, {c.pruned} pruned ({c.infeasible} of these as infeasible configurations), "
        f"{c.failed} failed, {c.running} running, {c.waiting} waiting."))
    for note in r.notes:
        blocks.append(Paragraph(f"Note: {note}"))
    if r.test_rows:
        blocks += test_ranking_blocks(r)
    blocks += validation_blocks(r, meta.top_k)
    if r.test_rows:
        blocks += per_class_blocks(r, meta.class_names)
    if r.plots:
        blocks.append(Heading("Plots", 3))
        blocks += [Image(title, file) for title, file in r.plots.items()]
    if r.importances:
        blocks.append(Heading("Parameter importances (fANOVA, on validation accuracy)", 3))
        if r.counts.complete < FEW_TRIALS:
            blocks.append(Paragraph(f"Computed from only {r.counts.complete} completed trials: with fewer than "
                                    f"{FEW_TRIALS}, importances are indicative at best."))
        blocks.append(Table(["parameter", "importance"],
                            [[name, f"{value:.3f}"] for name, value in r.importances.items()]))
    blocks.append(Heading("Best configuration", 3))
    if r.best_config:
        src = r.best_config["source"]
        path = str(PurePath(meta.folder) / r.best_config_file) if meta.folder else r.best_config_file
        blocks.append(Paragraph(
            f"{code(r.best_config_file)} holds trial {src['trial']} (highest validation accuracy; the test set "
            f"never chooses), {plural(r.best_config['epochs'], 'epoch')}, seed {r.best_config['seed']}. Retrain it "
            f"on all training images with {code(f'hpo retrain --config {shlex.quote(path)} --out model.keras')}."))
    else:
        blocks.append(Paragraph("No completed trial yet: nothing to export."))
    return blocks


def validation_blocks(r: StudyRanking, top_k: int) -> list[Block]:
    from cifar_hpo.reports.ranking import top_rows

    blocks: list[Block] = [Heading(f"Validation ranking (top {min(top_k, len(r.rows))} of {len(r.rows)} completed)", 3)]
    if not r.rows:
        blocks.append(Paragraph("No completed trial."))
    shown = top_rows(r.rows, top_k)
    extra = [r.baseline] if r.baseline is not None and r.baseline.rank is None else []
    with_cache = any(row.cache_fill_seconds is not None for row in [*shown, *extra])
    header = ["rank", "configuration", "val accuracy", "gain vs baseline", "best epoch", "epochs run", "parameters",
              "training (s)", *(["cache fill (s)"] if with_cache else []), "trial wall time (s)", "images/s"]

    def cells(row: RankedRow) -> list[str]:
        return [num(row.best_epoch), num(row.epochs_run), num(row.n_params), num(row.fit_seconds),
                *([num(row.cache_fill_seconds)] if with_cache else []), num(row.wall_seconds), num(row.images_per_s, 0)]

    rows = [[str(row.rank), row_label(row), pct(row.val_accuracy),
             "baseline" if row.baseline else points(row.gain_vs_baseline), *cells(row)] for row in shown]
    for b in extra:
        rows.append([f"({b.state.lower()})", row_label(b), pct(b.val_accuracy), "—", *cells(b)])
    if rows:
        blocks.append(Table(header, rows, align_right_from=2))
        blocks.append(Paragraph(
            "Training is the time in Keras' fit (training and validation epochs); "
            + ("cache fill is the time the trial spent computing InceptionV3 features for the feature cache (0 when "
               "an earlier trial had filled it); " if with_cache else "")
            + "trial wall time is the whole trial, model building and clean-up included."))
    if r.baseline is None:
        blocks.append(Paragraph("This study has no seed-baseline trial, so gains over it are not shown."))
    params_shown = [row for row in shown] + ([r.baseline] if r.baseline is not None and r.baseline.rank is None else [])
    if params_shown:
        blocks.append(Heading("Parameters of the configurations above", 4))
        names = param_names(params_shown)
        blocks.append(Table(["parameter"] + [row_label(row) for row in params_shown],
                            [[name] + [num(row.params.get(name), 4) for row in params_shown] for name in names]))
    return blocks


def test_ranking_blocks(r: StudyRanking) -> list[Block]:
    """The report's ranking when evaluated: test-set mean over seeds, and whether the top two really differ."""
    blocks: list[Block] = [Heading("Test-set evaluation (ranked by test mean)", 3)]
    own = any(r.summaries[t.key].source == OWN_MODEL for t in r.test_rows)
    blocks.append(Paragraph(
        "Each configuration was retrained on the training split from scratch with each seed for the epochs shown "
        "(its best epoch in the search unless --epochs was given), then evaluated once on the test set."
        + (" Rows whose seeds read \"own model\" are the trial's own model, kept from the search and evaluated "
           "as it was trained (all its epochs, the trial's seed), without retraining." if own else "")))
    blocks.append(Table(
        ["rank", "configuration", "test accuracy (mean ± std)", "seeds", "epochs", "val accuracy",
         "gain vs baseline (test)", "macro F1"],
        [[str(t.rank), label(t.trial, t.baseline), mean_std(t.mean, t.std), _seeds_cell(r.summaries[t.key]), str(t.epochs),
          pct(t.val_accuracy), "baseline" if t.baseline else points(t.gain_vs_baseline), f"{t.macro_f1:.4f}"]
         for t in r.test_rows],
        align_right_from=2))
    sep = r.separation
    if sep is not None:
        blocks.append(Paragraph(sep.sentence()))
    return blocks


def _seeds_cell(summary: Any) -> str:
    return "own model" if summary.source == OWN_MODEL else str(summary.seeds)


def per_class_blocks(r: StudyRanking, class_names: Sequence[str]) -> list[Block]:
    blocks: list[Block] = []
    for t in r.test_rows:
        summary = r.summaries[t.key]
        over = "the trial's own model" if summary.source == OWN_MODEL else f"mean over {t.seeds} seed(s)"
        blocks.append(Heading(f"Per-class report: {label(t.trial, t.baseline)} ({over})", 4))
        blocks.append(class_table(summary.report, class_names))
        if t.seeds > 1:
            blocks.append(Paragraph(PER_SEED_MEAN_NOTE))
        file = r.plots_confusion.get(t.key)
        if file:
            blocks.append(Image(f"Confusion matrix: {label(t.trial, t.baseline)}", file))
    return blocks


def class_table(report: Mapping[str, Any], class_names: Sequence[str]) -> Table:
    """scikit-learn's classification_report layout as a table: classes, accuracy, macro and weighted avg."""
    rows = [[name] + [f"{report[name][m]:.4f}" for m in REPORT_ROWS[:3]] + [str(int(report[name]["support"]))]
            for name in class_names]
    support = str(int(report["macro avg"]["support"]))
    rows.append(["accuracy", "", "", f"{report['accuracy']:.4f}", support])
    rows += [[name] + [f"{report[name][m]:.4f}" for m in REPORT_ROWS[:3]] + [str(int(report[name]["support"]))]
             for name in AVERAGES]
    return Table(["class", *REPORT_ROWS], rows)


def comparison_blocks(rankings: Sequence[StudyRanking], class_names: Sequence[str]) -> list[Block]:
    """Side by side: each study's chosen configuration (best validation accuracy) and, if evaluated, its test
    result."""
    blocks: list[Block] = [Heading("Comparison of studies", 2)]
    picks = [best_pick(r) for r in rankings]
    header = ["", *[f"{code(r.study)} ({r.space})" for r in rankings]]
    evaluated = [p["report"] is not None for p in picks]
    rows = [
        ["chosen configuration (best validation)", *[p["label"] for p in picks]],
        ["best val accuracy", *[pct(r.rows[0].val_accuracy) if r.rows else "—" for r in rankings]],
    ]
    if any(evaluated):  # rows that exist only after --evaluate are shown only when some study has them
        rows.append(["test accuracy (mean ± std)", *[p["test"] for p in picks]])
    rows.append(["parameters", *[num(p["n_params"]) for p in picks]])
    rows.append(["training time (s)", *[num(p["fit_seconds"]) for p in picks]])
    if any(p["cache_fill_seconds"] is not None for p in picks):
        rows.append(["cache fill (s)", *[num(p["cache_fill_seconds"]) for p in picks]])
    if any(p["wall_seconds"] is not None for p in picks):
        rows.append(["trial wall time (s)", *[num(p["wall_seconds"]) for p in picks]])
    rows.append(["completed / pruned / failed",
                 *[f"{r.counts.complete} / {r.counts.pruned} / {r.counts.failed}" for r in rankings]])
    if any(evaluated):
        for name in class_names:
            rows.append([f"F1 {name}", *[f"{p['report'][name]['f1-score']:.4f}" if p["report"] else "—" for p in picks]])
        rows.append(["macro F1", *[f"{p['report']['macro avg']['f1-score']:.4f}" if p["report"] else "—" for p in picks]])
    blocks.append(Table(header, rows))
    missing = [r.study for r, done in zip(rankings, evaluated) if not done]
    if missing:
        studies = " ".join(f"--study {shlex.quote(name)}" for name in missing)
        which = "these studies" if len(missing) < len(rankings) else "the studies"
        blocks.append(Paragraph(
            f"Test accuracy and per-class F1 {'are missing for ' + ', '.join(code(m) for m in missing) if any(evaluated) else 'are not shown'}: "
            f"{which} have no test-set evaluation yet. Get them with "
            f"{code(f'hpo report {studies} --evaluate')} (retrains the top configurations with several seeds)."))
    return blocks


def best_pick(r: StudyRanking) -> dict[str, Any]:
    """The configuration the study chose: its best by validation accuracy (of those evaluated on the test set,
    when any were); its test result is reported, never used to choose (the best of K by test is optimistic)."""
    tested = {t.trial: t for t in r.test_rows}
    chosen = next((row for row in r.rows if row.trial in tested), None)
    if chosen is not None:
        t = tested[chosen.trial]
        summary = r.summaries[t.key]
        return {"label": label(t.trial, t.baseline), "test": mean_std(t.mean, t.std), "n_params": summary.n_params,
                "fit_seconds": chosen.fit_seconds, "report": summary.report,
                "cache_fill_seconds": chosen.cache_fill_seconds, "wall_seconds": chosen.wall_seconds}
    if r.rows:
        row = r.rows[0]
        return {"label": row_label(row), "test": "—", "n_params": row.n_params, "fit_seconds": row.fit_seconds,
                "report": None, "cache_fill_seconds": row.cache_fill_seconds, "wall_seconds": row.wall_seconds}
    return {"label": "—", "test": "—", "n_params": None, "fit_seconds": None, "report": None,
            "cache_fill_seconds": None, "wall_seconds": None}


# ---------------------------------------------------------------- Markdown and HTML
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
_MD_CODE_PLAIN = re.compile(r"[^<>&|`\\]+")  # shown as `...`; anything else as <code> with escaped text


def _one_line(text: str) -> str:
    """A line break in a value would end a table row, a heading or a paragraph."""
    return " ".join(text.splitlines()) if ("\n" in text or "\r" in text) else text


def md_escape(text: str) -> str:
    """Plain text for Markdown (also safe in a table cell): entities for < > &, backslashes for the rest."""
    text = _one_line(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text)


def _md_code(text: str) -> str:
    text = _one_line(text)
    if _MD_CODE_PLAIN.fullmatch(text):
        return f"`{text}`"
    # A code span shows < > & | literally and cannot escape a backtick; inline <code> with escaped text can.
    return f"<code>{md_escape(text)}</code>"


def _md_inline(text: str) -> str:
    return "".join(_md_code(piece) if is_code else md_escape(piece) for is_code, piece in _segments(text))


def to_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {_md_inline(block.text)}")
        elif isinstance(block, Paragraph):
            out.append(_md_inline(block.text))
        elif isinstance(block, Table):
            cells = lambda row: "| " + " | ".join(_md_inline(c) for c in row) + " |"  # noqa: E731
            align = ["---" if i < block.align_right_from else "---:" for i in range(len(block.header))]
            out.append("\n".join([cells(block.header), "| " + " | ".join(align) + " |", *map(cells, block.rows)]))
        elif isinstance(block, Image):
            out.append(f"![{md_escape(block.title)}]({block.file})")  # file: a safe_filename name
        elif isinstance(block, Code):
            fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", block.text)), default=0))
            out.append(f"{fence}\n{block.text}\n{fence}")
    return "\n\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ccc;
padding:.25em .6em}th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}figure{margin:1em 0}code{background:#f5f5f5;padding:0 .2em}
pre{background:#f5f5f5;padding:.8em;overflow:auto}"""


def _inline(text: str) -> str:
    """Every piece escaped; code spans (the only inline markup the report uses) as <code>."""
    return "".join(f"<code>{html.escape(piece)}</code>" if is_code else html.escape(piece)
                   for is_code, piece in _segments(text))


def to_html(blocks: Sequence[Block], images: Mapping[str, bytes], title: str = "hpo report") -> str:
    """A single HTML file: every image inlined as a data: URI, so it opens anywhere without its folder."""
    body: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{_inline(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in block.header)
            rows = "".join(
                "<tr>" + "".join(f"<td{' class=n' if i >= block.align_right_from else ''}>{_inline(c)}</td>"
                                 for i, c in enumerate(row)) + "</tr>" for row in block.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(block, Image):
            data = images.get(block.file)
            if data is None:
                body.append(f"<p>(missing image {html.escape(block.file)})</p>")
            else:
                uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
                body.append(f'<figure><img alt="{html.escape(block.title)}" src="{uri}">'
                            f"<figcaption>{html.escape(block.title)}</figcaption></figure>")
        elif isinstance(block, Code):
            body.append(f"<pre>{html.escape(block.text)}</pre>")
    return (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# ---------------------------------------------------------------- machine-readable ranking
def _test_of(r: StudyRanking, trial: int) -> Any:
    return next((r.summaries[t.key] for t in r.test_rows if t.trial == trial), None)


def ranking_json(rankings: Sequence[StudyRanking], meta: ReportMeta) -> str:
    studies = []
    for r in rankings:
        sep = r.separation
        studies.append({
            "study": r.study, "space": r.space, "settings": r.settings, "counts": {
                "complete": r.counts.complete, "pruned": r.counts.pruned, "infeasible": r.counts.infeasible,
                "failed": r.counts.failed, "running": r.counts.running, "waiting": r.counts.waiting},
            "baseline": r.baseline.to_dict() if r.baseline else None,
            "ranking": [row.to_dict() for row in r.rows],
            "test_ranking": [_test_row_dict(t, r.summaries[t.key]) for t in r.test_rows],
            "top_two_distinct": None if sep is None else {"gap": sep.gap, "spread": sep.spread, "distinct": sep.distinct},
            "importances": r.importances,
            "best_config_trial": r.best_config["source"]["trial"] if r.best_config else None,
            "notes": r.notes,
        })
    return json.dumps({"format_version": 1, "generated": meta.generated, "studies": studies}, indent=2) + "\n"


def _test_row_dict(t: TestRow, summary: Any) -> dict[str, Any]:
    return {"rank": t.rank, "key": t.key, "trial": t.trial, "baseline": t.baseline, "test_accuracy_mean": t.mean,
            "test_accuracy_std": t.std, "seeds": summary.seed_list, "accuracies": summary.accuracies,
            "epochs": t.epochs, "val_accuracy": t.val_accuracy, "gain_vs_baseline": t.gain_vs_baseline,
            "macro_f1": t.macro_f1, "classification_report": summary.report, "confusion_matrix": summary.confusion,
            "source": summary.source}


def ranking_csv(rankings: Sequence[StudyRanking]) -> str:
    """One line per trial of every study: completed ones ranked first, then pruned/failed (rank empty)."""
    all_rows = [(r, row) for r in rankings for row in [*r.rows, *r.unranked]]
    names = param_names(row for _, row in all_rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*CSV_FIELDS, *names])
    for r, row in all_rows:
        test = _test_of(r, row.trial)
        writer.writerow([
            r.study, row.rank or "", row.trial, row.state, row.baseline, _csv(row.val_accuracy),
            _csv(row.gain_vs_baseline), _csv(row.best_epoch), _csv(row.epochs_run), _csv(row.n_params),
            _csv(row.fit_seconds), _csv(row.images_per_s), _csv(row.wall_seconds), _csv(row.cache_fill_seconds),
            _csv(test.mean if test else None), _csv(test.std if test else None), _csv(test.seeds if test else None),
            *[_csv(row.params.get(name)) for name in names],
        ])
    return buffer.getvalue()


def _csv(value: Any) -> Any:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return value


def report_text(summary: Any, class_names: Sequence[str]) -> str:
    return format_report_text(summary.report, class_names)
