"""Per-pair and mean metric tables as CSV and Markdown text.

Pure formatting: rows in, text out (the evaluate command writes the files).
A *row* is a dict with ``task``, ``pair``, ``method`` and one float per
metric name.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence

import numpy as np

from medfuse.metrics import METRIC_NAMES

#: Printed decimals: entropies and MI in bits get 3, the [0, 1] indices 4.
DECIMALS = {"EN": 3, "MI": 3, "QMI": 3, "VIFF": 4, "QG": 4, "QY": 4, "QC": 4, "QP": 4}


def _fmt(value: float, name: str, decimals: int | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return f"{value:.{decimals if decimals is not None else DECIMALS.get(name, 4)}f}"


def mean_rows(rows: Iterable[dict], metric_names: Sequence[str] = METRIC_NAMES) -> list[dict]:
    """Mean of each metric per (task, method), in first-seen order.

    Returns
    -------
    list of dict
        ``task``, ``method``, ``pairs`` (count) and the metric means; a metric
        that is NaN for some pairs (undefined there) is averaged over the rest.
    """
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["method"]), []).append(row)
    out = []
    for (task, method), members in groups.items():
        summary = {"task": task, "method": method, "pairs": len(members)}
        for name in metric_names:
            values = np.array([m[name] for m in members], dtype=np.float64)
            finite = values[np.isfinite(values)]
            summary[name] = float(finite.mean()) if finite.size else float("nan")
        out.append(summary)
    return out


def to_csv(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """CSV text with a header; floats with 6 decimals."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_fmt(row[c], c, 6) if isinstance(row[c], float) else row[c] for c in columns])
    return buffer.getvalue()


def to_markdown(rows: Sequence[dict], metric_names: Sequence[str] = METRIC_NAMES, *, key: str = "method") -> str:
    """Markdown tables, one per task, best value per metric in bold.

    Parameters
    ----------
    rows : per-pair rows or :func:`mean_rows` output
    key : column naming the row ('method' for means; per-pair rows get
        'pair' and 'method' both)
    """
    by_task: dict[str, list[dict]] = {}
    for row in rows:
        by_task.setdefault(row["task"], []).append(row)
    lines: list[str] = []
    for task, members in by_task.items():
        label_columns = ["pair", "method"] if "pair" in members[0] else ["method"]
        count = f" ({members[0]['pairs']} pairs)" if "pairs" in members[0] else ""
        lines.append(f"### {task}{count}")
        lines.append("")
        lines.append("| " + " | ".join(label_columns + list(metric_names)) + " |")
        lines.append("|" + "---|" * len(label_columns) + "---:|" * len(metric_names))
        best = {}
        if "pair" not in members[0]:
            for name in metric_names:
                finite = [m[name] for m in members if not math.isnan(m[name])]
                best[name] = max(finite) if finite else None
        for m in members:
            cells = [str(m[c]) for c in label_columns]
            for name in metric_names:
                text = _fmt(m[name], name)
                if best.get(name) is not None and _fmt(best[name], name) == text and len(members) > 1:
                    text = f"**{text}**"
                cells.append(text)
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
