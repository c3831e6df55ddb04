"""``heed report RUN_DIR``: one self-contained HTML page (and a Markdown twin) for a training run.

Reads what ``heed train`` / ``heed judge`` left in the run directory: heed.json, audit.json,
metrics.jsonl, loss.png, test-with-response.json, test-scores.json and any *-judged.json.
Images are inlined as data URIs so the page can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from heed.errors import HeedError
from heed.io import check_out_file, read_json, read_text, write_text

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%;margin:.5em 0}td,th{border:1px solid #ddd;padding:4px 8px;
vertical-align:top;text-align:left}th{background:#f4f4f4}td.num{text-align:right;white-space:nowrap}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(160px,1fr));gap:8px}
.card{border:1px solid #ddd;border-radius:6px;padding:8px}.card b{display:block;font-size:1.3em}
pre{white-space:pre-wrap;margin:0;font:12px/1.35 ui-monospace,monospace}
tr.bad td{background:#fff3f3}tr.good td{background:#f3fff4}input{padding:4px;width:18em}
"""

FILTER_JS = """
function filterRows(){const q=document.getElementById('q').value.toLowerCase();
const only=document.getElementById('wrong').checked;
for(const tr of document.querySelectorAll('#responses tbody tr')){
const hit=tr.textContent.toLowerCase().includes(q)&&(!only||tr.classList.contains('bad'));
tr.style.display=hit?'':'none';}}
"""


TRAIN_FIX = "delete it to leave its section out of the report, or train again"
JUDGE_FIX = "delete it, or run heed judge again"


class _Damaged(Exception):
    """What is wrong with a run file's content (the caller adds the file and the fix)."""


def _need(ok: bool, problem: str) -> None:
    if not ok:
        raise _Damaged(problem)


def _number(value: Any, optional: bool = True) -> bool:
    return (value is None and optional) or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _read_json(path: Path, check: Any, fix: str) -> Any:
    """A run file's JSON (None when there is none), its shape checked by ``check``: a damaged file is one
    line naming it and the fix, never a traceback halfway through the page."""
    if not path.exists():
        return None
    try:
        value = read_json(path)
    except HeedError as e:
        raise HeedError(f"{e.problems[0]}; {fix}") from None
    try:
        check(value)
    except _Damaged as e:
        raise HeedError(f"{path}: {e}; {fix}") from None
    return value


def _check_meta(meta: Any) -> None:
    _need(isinstance(meta, dict), "expected a JSON object (the run's metadata)")
    config = meta.get("config", {})
    _need(isinstance(config, dict) and all(isinstance(config.get(k, {}), dict) for k in ("train", "data")),
          "'config' is not an object with 'train' and 'data' objects")
    _need(_number(meta.get("train_seconds", 0), optional=False), "'train_seconds' is not a number")


def _check_audit(audit: Any) -> None:
    _need(isinstance(audit, dict), "expected a JSON object (the data audit)")
    if not audit:
        return
    missing = [k for k in AUDIT_LISTS + ("records", "split", "empty_inputs", "supervised_share") if k not in audit]
    _need(not missing, f"missing {', '.join(map(repr, missing))}")
    _need(all(isinstance(audit[k], list) for k in AUDIT_LISTS), "a finding is not a list")
    _need(isinstance(audit["split"], dict), "'split' is not an object")
    _need(isinstance(audit.get("lengths", {}), dict), "'lengths' is not an object")
    _need(_number(audit["supervised_share"], optional=False), "'supervised_share' is not a number")


def _check_scores(scores: Any) -> None:
    _need(isinstance(scores, dict), "expected a JSON object (the test scores)")
    for key in ("exact_match", "rouge_l", "task_overall"):
        _need(_number(scores.get(key)), f"'{key}' is not a number")
    _need(scores.get("rouge_l") is None or (scores.get("exact_match") is not None and "n" in scores),
          "'exact_match' or 'n' is missing")
    families = scores.get("task_accuracy") or {}
    _need(isinstance(families, dict) and all(isinstance(r, dict) and "n" in r and _number(r.get("accuracy"), False)
                                             for r in families.values()),
          "'task_accuracy' is not an object of {n, accuracy} per family")


def _check_responses(records: Any) -> None:
    _need(isinstance(records, list), "expected a JSON list of records")
    for i, r in enumerate(records):
        _need(isinstance(r, dict), f"record {i} is not an object")
        for key in ("instruction", "task"):
            _need(isinstance(r.get(key, ""), str), f"record {i}: '{key}' is not a string")


def _check_judged(judged: Any) -> None:
    _need(isinstance(judged, dict), "expected a JSON object (a heed judge run)")
    s = judged.get("summary", {})
    _need(isinstance(s, dict), "'summary' is not an object")
    _need(isinstance(s.get("failed", []), list), "'summary.failed' is not a list")
    ci = s.get("ci95")
    _need(ci is None or (isinstance(ci, list) and len(ci) == 2 and all(_number(v) for v in ci)),
          "'summary.ci95' is not a pair of numbers")
    if s.get("mean") is not None:
        _need(_number(s["mean"]) and ci is not None and None not in ci and "scored" in s and "total" in s,
              "'summary' has a mean but no ci95, scored or total")
    records = judged.get("records", [])
    _need(isinstance(records, list) and all(isinstance(r, dict) for r in records), "'records' is not a list of objects")
    for i, r in enumerate(records):
        _need(_number(r.get("judge_score")), f"record {i}: 'judge_score' is not a number")


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl: one JSON object per line, each with the columns the loss table shows."""
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as e:
            why = e.msg if isinstance(e, json.JSONDecodeError) else type(e).__name__
            raise HeedError(f"{path}: line {number}: invalid JSON ({why}); remove that line, or {TRAIN_FIX}") from None
        if not (isinstance(row, dict) and all(k in row for k in METRIC_COLUMNS)):
            raise HeedError(f"{path}: line {number}: expected an object with {', '.join(METRIC_COLUMNS)}; "
                            f"remove that line, or {TRAIN_FIX}")
        rows.append(row)
    return rows


AUDIT_LISTS = ("over_max_length", "exact_duplicates", "near_duplicates", "conflicting_outputs", "test_in_train")
METRIC_COLUMNS = ("step", "epoch", "tokens_seen", "train_loss")


def collect(run_dir: Path) -> dict[str, Any]:
    if not run_dir.is_dir():
        raise HeedError(f"{run_dir}: no such run directory")
    meta = _read_json(run_dir / "heed.json", _check_meta, "restore it from a copy, or train again")
    if meta is None:
        raise HeedError(f"{run_dir}: no heed.json here; point heed report at a directory written by heed train")
    metrics = _read_metrics(run_dir / "metrics.jsonl")
    judged = {}
    for path in sorted(run_dir.glob("*-judged.json")):
        judged[path.name] = _read_json(path, _check_judged, JUDGE_FIX) | {"_png": path.with_suffix(".png")}
    return {"dir": run_dir, "meta": meta, "metrics": metrics,
            "audit": _read_json(run_dir / "audit.json", _check_audit, TRAIN_FIX),
            "responses": _read_json(run_dir / "test-with-response.json", _check_responses, TRAIN_FIX) or [],
            "scores": _read_json(run_dir / "test-scores.json", _check_scores, TRAIN_FIX), "judged": judged}


def _img(path: Path) -> str:
    if not path.is_file():
        return "<p>(no image)</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def _table(rows: list[list[Any]], head: list[str]) -> str:
    out = ["<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    return "".join(out) + "</tbody></table>"


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return "—" if value is None else str(value)


def _judge_scores(data: dict[str, Any]) -> list[Any]:
    """Per-record judge scores of the first judge file, aligned with the responses (None where missing)."""
    for judged in data["judged"].values():
        return [r.get("judge_score") for r in judged.get("records", [])]
    return []


def render_html(data: dict[str, Any]) -> str:
    meta, train = data["meta"], data["meta"].get("config", {}).get("train", {})
    cards = [("base model", meta.get("base_model")), ("template", meta.get("template")),
             ("steps", meta.get("steps")), ("best step", meta.get("best_step")),
             ("best val loss", _fmt(meta.get("best_val_loss"))), ("train time", f"{meta.get('train_seconds', 0):.0f}s")]
    scores = data["scores"] or {}
    if scores.get("rouge_l") is not None:
        cards += [("ROUGE-L F1", _fmt(scores["rouge_l"])), ("exact match", f"{scores['exact_match']:.1%}")]
    if scores.get("task_overall") is not None:
        cards.append(("task accuracy", f"{scores['task_overall']:.1%}"))
    for name, judged in data["judged"].items():
        s = judged.get("summary", {})
        if s.get("mean") is not None:
            cards.append((f"judge {judged.get('judge', '')}", f"{s['mean']:.1f} ({s['scored']}/{s['total']})"))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>heed run {html.escape(str(data['dir']))}</title>",
             f"<style>{STYLE}</style><script>{FILTER_JS}</script></head><body>",
             f"<h1>heed run: {html.escape(str(data['dir']))}</h1><div class='grid'>"]
    parts += [f"<div class='card'>{html.escape(k)}<b>{html.escape(str(v))}</b></div>" for k, v in cards]
    parts.append("</div><h2>Configuration</h2><details><summary>training and data settings</summary>")
    settings = [[k, v] for k, v in train.items() if k not in ("lora",)] + [["lora", train.get("lora")]]
    settings += [[f"data.{k}", v] for k, v in meta.get("config", {}).get("data", {}).items()]
    parts.append(_table(settings, ["setting", "value"]) + "</details>")
    parts.append("<h2>Data</h2>" + _audit_html(data["audit"], meta))
    parts.append("<h2>Loss</h2>" + _img(data["dir"] / "loss.png"))
    if data["metrics"]:
        parts.append(_table([[m["step"], m["epoch"], m["tokens_seen"], _fmt(m["train_loss"]), _fmt(m.get("val_loss"))]
                             for m in data["metrics"]], ["step", "epoch", "tokens seen", "train loss", "val loss"]))
    parts.append("<h2>Metrics</h2>" + _metrics_html(scores))
    for name, judged in data["judged"].items():
        s = judged.get("summary", {})
        ci = s.get("ci95") or ["—", "—"]
        parts.append(f"<h2>Judge: {html.escape(str(judged.get('judge')))} ({html.escape(name)})</h2>")
        parts.append(_table([[s.get("scored"), s.get("total"), _fmt(s.get("mean"), 1),
                              f"{_fmt(ci[0], 1)}–{_fmt(ci[1], 1)}", _fmt(s.get("median"), 1), len(s.get("failed", []))]],
                            ["scored", "total", "mean", "95% CI", "median", "unparseable"]))
        parts.append(_img(judged["_png"]))
    parts.append(_responses_html(data))
    parts.append("</body></html>")
    return "".join(parts)


def _audit_html(audit: dict[str, Any] | None, meta: dict[str, Any]) -> str:
    if not audit:
        split = meta.get("split", {})
        return f"<p>split: {html.escape(json.dumps(split))}; no audit.json in the run directory</p>"
    lengths = audit.get("lengths", {})
    rows = [["records", audit["records"]], ["split (train/test/val)", "/".join(str(v) for v in audit["split"].values())],
            ["tokens per example (min/median/p95/max)", "/".join(str(lengths.get(k)) for k in ("min", "median", "p95", "max"))],
            ["over max length", len(audit["over_max_length"])], ["exact duplicates", len(audit["exact_duplicates"])],
            ["near duplicates", len(audit["near_duplicates"])], ["same prompt, different output", len(audit["conflicting_outputs"])],
            ["test prompts also in train", len(audit["test_in_train"])], ["empty inputs", audit["empty_inputs"]],
            ["supervised-token share", f"{audit['supervised_share']:.1%}"]]
    return _table(rows, ["check", "value"])


def _metrics_html(scores: dict[str, Any]) -> str:
    if not scores:
        return "<p>no test-scores.json</p>"
    out = _table([[scores.get("n"), _fmt(scores.get("exact_match")), _fmt(scores.get("rouge_l"))]],
                 ["test records", "exact match", "ROUGE-L F1"])
    if scores.get("task_accuracy"):
        out += _table([[t, r["n"], f"{r['accuracy']:.1%}"] for t, r in scores["task_accuracy"].items()],
                      ["task family", "n", "accuracy"])
    return out


def _responses_html(data: dict[str, Any]) -> str:
    records, judge = data["responses"], _judge_scores(data)
    from heed.data.tasks import FAMILIES, verify
    from heed.evaluate.metrics import rouge_l

    rows = []
    for i, r in enumerate(records):
        reference, response = str(r.get("output", "")), str(r.get("model_response", ""))
        score = judge[i] if i < len(judge) else None
        if r.get("task") in FAMILIES:
            good = verify(r["task"], reference, response)
        elif score is not None:
            good = score >= 50
        else:
            good = rouge_l(reference, response) >= 0.5
        prompt = r.get("instruction", "") + (f"\n\n{r['input']}" if r.get("input") else "")
        cells = [f"<td class='num'>{i}</td>"] + [f"<td><pre>{html.escape(c)}</pre></td>" for c in (prompt, reference, response)]
        cells.append(f"<td class='num'>{_fmt(score, 0) if score is not None else '—'}</td>")
        rows.append(f"<tr class='{'good' if good else 'bad'}'>{''.join(cells)}</tr>")
    return ("<h2 id='responses-head'>Test responses</h2><p><input id='q' placeholder='filter…' oninput='filterRows()'> "
            "<label><input type='checkbox' id='wrong' onchange='filterRows()' style='width:auto'> only wrong</label></p>"
            "<table id='responses'><thead><tr><th>#</th><th>instruction</th><th>reference</th><th>response</th>"
            f"<th>judge</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def render_markdown(data: dict[str, Any]) -> str:
    meta, scores = data["meta"], data["scores"] or {}
    lines = [f"# heed run: {data['dir']}", "",
             f"- base model: {meta.get('base_model')}; template: {meta.get('template')}; steps: {meta.get('steps')}; "
             f"best step: {meta.get('best_step')} (val loss {_fmt(meta.get('best_val_loss'))}); "
             f"train time: {meta.get('train_seconds', 0):.0f}s"]
    if scores.get("rouge_l") is not None:
        lines.append(f"- test: exact match {scores['exact_match']:.1%}, ROUGE-L F1 {scores['rouge_l']:.3f} (n={scores['n']})")
    for name, judged in data["judged"].items():
        s = judged.get("summary", {})
        if s.get("mean") is not None:
            lines.append(f"- judge {judged.get('judge')}: mean {s['mean']:.1f}, 95% CI {s['ci95'][0]:.1f}–{s['ci95'][1]:.1f}, "
                         f"{s['scored']}/{s['total']} scored")
    lines += ["", "![loss](loss.png)", "", "| # | instruction | reference | response |", "| --- | --- | --- | --- |"]
    for i, r in enumerate(data["responses"]):
        cell = [str(x).replace("|", "\\|").replace("\n", " ") for x in
                (r.get("instruction", ""), r.get("output", ""), r.get("model_response", ""))]
        lines.append(f"| {i} | " + " | ".join(cell) + " |")
    return "\n".join(lines) + "\n"


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    data = collect(Path(run_dir))
    html_path, md_path = data["dir"] / "report.html", data["dir"] / "report.md"
    for path in (html_path, md_path):
        check_out_file(path, "RUN_DIR: the report")
    write_text(html_path, render_html(data))
    write_text(md_path, render_markdown(data))
    return html_path, md_path
