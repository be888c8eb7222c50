"""The distributed_analysis task type: each bot of a swarm analyses its own part of a dataset.

On a swarm the dataset is split evenly over the bots, or, with `chunk_size`, bot i takes rows
[i * chunk_size, (i + 1) * chunk_size) (empty past the end: a swarm may have more bots than the
dataset has chunks). A task outside a mass-action takes the whole dataset. Each result carries a
`merge_state`, from which app/services/aggregates.py builds the answer of one pass over every row.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from app.handlers import TaskFailed, TaskInput
from app.handlers.data import optional_chunk_size
from app.handlers.datasets import Dataset, open_dataset, row_range
from app.handlers.summaries import Columns, ExactSum, pack_summary, unpack

ANALYSIS_TYPES = ("sentiment", "summary")
TEXT_FIELDS = ("text", "review", "comment", "message", "content")
# The slice of tasks assigned before datasets were split evenly and that name no chunk_size.
DEFAULT_CHUNK_SIZE = 1000
# VADER's own recommended cut-offs on the compound score.
POSITIVE_AT = 0.05
NEGATIVE_AT = -0.05

_analyzer: SentimentIntensityAnalyzer | None = None
_analyzer_lock = threading.Lock()


def analyze(task: TaskInput) -> dict[str, Any]:
    """Analyse this task's part of the dataset for sentiment or a column summary."""
    analysis_type = task.data.get("analysis_type")
    if analysis_type not in ANALYSIS_TYPES:
        raise TaskFailed(
            f"unknown analysis_type {analysis_type!r}; allowed: {', '.join(ANALYSIS_TYPES)}"
        )
    chunk_size = optional_chunk_size(task.data)
    dataset = open_dataset(task.data, task.data_dir)
    start, end = row_range(dataset.total, task, chunk_size, DEFAULT_CHUNK_SIZE)
    end = max(start, min(end, dataset.total))
    text_field = None
    if analysis_type == "sentiment":
        text_field = _text_field(dataset, task.data.get("text_field"))
    summary = AnalysisSummary.of_rows(dataset, start, end, analysis_type, text_field)
    result = summary.presented()
    if task.slice_index is not None:
        result["merge_state"] = pack_summary(summary)
    return result


@dataclass
class AnalysisSummary:
    """Sentiment counts or column statistics of some rows; merges with other rows' summaries."""

    analysis_type: str
    start: int
    end: int
    rows: int = 0
    text_field: str | None = None
    counts: dict[str, int] = field(
        default_factory=lambda: {"positive": 0, "negative": 0, "neutral": 0}
    )
    compound: ExactSum = field(default_factory=ExactSum)
    columns: Columns | None = None

    @classmethod
    def of_rows(
        cls, dataset: Dataset, start: int, end: int, analysis_type: str, text_field: str | None
    ) -> AnalysisSummary:
        """Analyse rows [start, end) of the dataset."""
        summary = cls(analysis_type, start, end, text_field=text_field)
        if analysis_type == "summary":
            summary.columns = Columns()
            batch: list[tuple[int, dict[str, Any]]] = []
            for number, row in enumerate(dataset.rows(start, end), start):
                batch.append((number, row))
                if len(batch) == 2048:
                    summary.columns.add_rows(batch, dataset.uniform)
                    batch = []
            summary.columns.add_rows(batch, dataset.uniform)
            summary.rows = end - start
            return summary
        summary.add_texts(row.get(text_field or "") for row in dataset.rows(start, end))
        return summary

    def add_texts(self, texts: Iterable[Any]) -> None:
        """Score texts with VADER and count them by class."""
        analyzer = _sentiment_analyzer()
        for text in texts:
            compound = analyzer.polarity_scores("" if text is None else str(text))["compound"]
            self.compound.add(compound)
            self.rows += 1
            if compound >= POSITIVE_AT:
                self.counts["positive"] += 1
            elif compound <= NEGATIVE_AT:
                self.counts["negative"] += 1
            else:
                self.counts["neutral"] += 1

    def merge(self, other: AnalysisSummary) -> None:
        """Fold another part's summary into this one."""
        # The rows covered: empty parts (past the end of the data) add none.
        if other.start == other.end:
            if self.start == self.end:
                self.start = self.end = min(self.start, other.start)
        elif self.start == self.end:
            self.start, self.end = other.start, other.end
        else:
            self.start, self.end = min(self.start, other.start), max(self.end, other.end)
        self.rows += other.rows
        for key, value in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + value
        self.compound.merge(other.compound)
        if self.columns is not None and other.columns is not None:
            self.columns.merge(other.columns)

    def presented(self) -> dict[str, Any]:
        """The result as one task over the same rows shows it."""
        result: dict[str, Any] = {
            "analysis_type": self.analysis_type,
            "rows": self.rows,
            "slice": [self.start, self.end],
        }
        if self.columns is not None:
            result["columns"] = self.columns.summary()
            return result
        result["text_field"] = self.text_field
        result.update(self.counts)
        result["mean_compound"] = self.compound.mean(self.rows)
        return result

    def to_json(self) -> dict[str, Any]:
        return {
            "analysis_type": self.analysis_type,
            "slice": [self.start, self.end],
            "rows": self.rows,
            "text_field": self.text_field,
            "counts": self.counts,
            "compound": self.compound.to_json(),
            "columns": None if self.columns is None else self.columns.to_json(),
        }

    @classmethod
    def from_json(cls, packed: Any) -> AnalysisSummary:
        """From `to_json`'s dict, or the string `pack` made of it."""
        raw = unpack(packed)
        return cls(
            analysis_type=raw["analysis_type"],
            start=int(raw["slice"][0]),
            end=int(raw["slice"][1]),
            rows=int(raw["rows"]),
            text_field=raw["text_field"],
            counts={key: int(value) for key, value in raw["counts"].items()},
            compound=ExactSum.from_json(raw["compound"]),
            columns=None if raw["columns"] is None else Columns.from_json(raw["columns"]),
        )


def _sentiment_analyzer() -> SentimentIntensityAnalyzer:
    # Loading the lexicon takes tens of milliseconds: once per process, not once per task.
    global _analyzer
    if _analyzer is None:
        with _analyzer_lock:
            if _analyzer is None:
                _analyzer = SentimentIntensityAnalyzer()
    return _analyzer


def _text_field(dataset: Dataset, requested: Any) -> str:
    # Field names come from the whole dataset so every part agrees, even an empty one.
    present = set(dataset.fields)
    if requested is not None:
        if not isinstance(requested, str) or (dataset.total and requested not in present):
            raise TaskFailed(f"text_field {requested!r} is not a column of the dataset")
        return requested
    for name in TEXT_FIELDS:
        if name in present:
            return name
    if not dataset.total:
        return TEXT_FIELDS[0]
    raise TaskFailed(
        f"no text column found; name one with 'text_field' or use one of {', '.join(TEXT_FIELDS)}"
    )
