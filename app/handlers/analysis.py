"""The distributed_analysis task type: each bot of a swarm analyses its own slice of a dataset.

Bot i takes rows [i * chunk_size, (i + 1) * chunk_size); a task outside a mass-action takes the
whole dataset. A slice past the end is empty rather than an error, since a swarm may have more
bots than the dataset has chunks.
"""

from __future__ import annotations

import threading
from typing import Any

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from app.handlers import TaskFailed, TaskInput
from app.handlers.data import column_stats
from app.handlers.files import input_records

ANALYSIS_TYPES = ("sentiment", "summary")
TEXT_FIELDS = ("text", "review", "comment", "message", "content")
DEFAULT_CHUNK_SIZE = 1000
# VADER's own recommended cut-offs on the compound score.
POSITIVE_AT = 0.05
NEGATIVE_AT = -0.05

_analyzer: SentimentIntensityAnalyzer | None = None
_analyzer_lock = threading.Lock()


def analyze(task: TaskInput) -> dict[str, Any]:
    """Analyse this task's slice of the dataset for sentiment or a column summary."""
    analysis_type = task.data.get("analysis_type")
    if analysis_type not in ANALYSIS_TYPES:
        raise TaskFailed(
            f"unknown analysis_type {analysis_type!r}; allowed: {', '.join(ANALYSIS_TYPES)}"
        )
    chunk_size = _chunk_size(task.data.get("chunk_size", DEFAULT_CHUNK_SIZE))
    records = input_records(task.data, task.data_dir)
    start, end = slice_bounds(len(records), task.slice_index, chunk_size)
    rows = records[start:end]
    result: dict[str, Any] = {
        "analysis_type": analysis_type,
        "rows": len(rows),
        "slice": [start, end],
    }
    if analysis_type == "summary":
        result["columns"] = column_stats(rows)
        return result
    text_field = _text_field(records, task.data.get("text_field"))
    result["text_field"] = text_field
    result.update(sentiment_counts(row.get(text_field) for row in rows))
    return result


def slice_bounds(total: int, slice_index: int | None, chunk_size: int) -> tuple[int, int]:
    """The [start, end) rows a bot takes; empty (start == end) past the end of the data."""
    if slice_index is None:
        return 0, total
    if slice_index < 0:
        raise TaskFailed(f"slice index must be 0 or more, got {slice_index}")
    start = slice_index * chunk_size
    return start, max(start, min(start + chunk_size, total))


def sentiment_counts(texts: Any) -> dict[str, Any]:
    """Positive, negative and neutral counts and the mean VADER compound score of texts."""
    analyzer = _sentiment_analyzer()
    positive = negative = neutral = 0
    total = 0.0
    for text in texts:
        compound = analyzer.polarity_scores("" if text is None else str(text))["compound"]
        total += compound
        if compound >= POSITIVE_AT:
            positive += 1
        elif compound <= NEGATIVE_AT:
            negative += 1
        else:
            neutral += 1
    count = positive + negative + neutral
    return {
        "positive": positive,
        "negative": negative,
        "neutral": neutral,
        "mean_compound": round(total / count, 4) if count else 0.0,
    }


def _sentiment_analyzer() -> SentimentIntensityAnalyzer:
    # Loading the lexicon takes tens of milliseconds: once per process, not once per task.
    global _analyzer
    if _analyzer is None:
        with _analyzer_lock:
            if _analyzer is None:
                _analyzer = SentimentIntensityAnalyzer()
    return _analyzer


def _chunk_size(raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise TaskFailed(f"'chunk_size' must be a whole number of at least 1, got {raw!r}")
    return raw


def _text_field(records: list[dict[str, Any]], requested: Any) -> str:
    # Field names are looked up on the whole dataset so every slice agrees, even an empty one.
    present = _field_names(records)
    if requested is not None:
        if not isinstance(requested, str) or (records and requested not in present):
            raise TaskFailed(f"text_field {requested!r} is not a column of the dataset")
        return requested
    for name in TEXT_FIELDS:
        if name in present:
            return name
    if not records:
        return TEXT_FIELDS[0]
    raise TaskFailed(
        f"no text column found; name one with 'text_field' or use one of {', '.join(TEXT_FIELDS)}"
    )


def _field_names(records: list[dict[str, Any]]) -> set[str]:
    # The first rows are enough to learn the columns; scanning millions of rows per bot is not.
    names: set[str] = set()
    for row in records[:1000]:
        names.update(row)
    return names
