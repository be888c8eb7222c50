"""How the results of a mass-action's tasks merge into one answer.

Each task type may have a merge rule. A rule is associative: the worker folds the tasks a record
statement finished into a partial (`fold`), partials combine in any order and grouping
(`combine`), and `present` turns the combined partial into the answer a caller reads. A
mass-action's aggregate is therefore kept as partials written with its outcomes and merged on read,
never recomputed from its task rows.

Task types without a rule of their own get COUNTING: tasks by state and failures by reason. The AI
types (calls to a downstream service) get SERVICE_CALLS: the same, plus latency percentiles. The
data task types (data_processing, mass_data_processing, distributed_analysis, reporting) add the
merged summaries their parts' results carry (`summary_rule`): the answer's `result` is what one
task over every row of the dataset answers (see app/handlers/summaries.py).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from app.handlers.analysis import AnalysisSummary
from app.handlers.data import DataSummary
from app.handlers.reporting import ReportSummary
from app.handlers.summaries import pack, take_summary
from app.services.service_defaults import DOWNSTREAM

Partial = dict[str, Any]


@dataclass(frozen=True)
class Finished:
    """One task as its merge rule sees it: how it ended, its result or error, how long it ran."""

    task_type: str
    state: str
    result: Any
    error: str | None
    duration_ms: float | None = None


@dataclass(frozen=True)
class MergeRule:
    """fold finished tasks into a partial; combine two partials; present the combined one.

    `combine_all`, when a rule has it, combines many partials at once: the same partial as
    combining them pairwise, decoding each once (rules whose partials are costly to decode).
    """

    fold: Callable[[list[Finished]], Partial]
    combine: Callable[[Partial, Partial], Partial]
    present: Callable[[Partial], dict[str, Any]]
    combine_all: Callable[[list[Partial]], Partial] | None = None


def add_counts(left: Mapping[str, Any], right: Mapping[str, Any]) -> dict[str, Any]:
    """Key-wise sum of two {name: number} maps."""
    merged = dict(left)
    for key, value in right.items():
        merged[key] = merged.get(key, 0) + value
    return merged


def _failure_reason(error: str | None) -> str:
    # "image_generation: service answered 503" -> "service answered 503": the type is known.
    reason = (error or "unknown").split(": ", 1)[-1]
    return reason[:120]


def _fold_counts(tasks: list[Finished]) -> Partial:
    by_state: dict[str, int] = {}
    failures: dict[str, int] = {}
    for task in tasks:
        by_state[task.state] = by_state.get(task.state, 0) + 1
        if task.state == "failed":
            reason = _failure_reason(task.error)
            failures[reason] = failures.get(reason, 0) + 1
    return {"by_state": by_state, "failures": failures}


def _combine_counts(left: Partial, right: Partial) -> Partial:
    return {
        "by_state": add_counts(left.get("by_state", {}), right.get("by_state", {})),
        "failures": add_counts(left.get("failures", {}), right.get("failures", {})),
    }


def _present_counts(combined: Partial) -> dict[str, Any]:
    return {
        "tasks": combined.get("by_state", {}),
        "failures_by_reason": combined.get("failures", {}),
    }


COUNTING = MergeRule(fold=_fold_counts, combine=_combine_counts, present=_present_counts)


# ---- calls to AI services: counts, failures by reason, latency percentiles ----------------------

# Latencies are kept as counts per log-scale bucket: bucket i holds (2^((i-1)/8), 2^(i/8)] ms.
# Counts add, so partials merge exactly; a percentile read from a bucket's geometric middle is
# within 2^(1/16) - 1 (4.4 %) of the true value (and clamped to the exact min and max).
LATENCY_BUCKETS_PER_DOUBLING = 8
LATENCY_ERROR = "approximate: log-scale buckets, within 4.4 %"
PERCENTILES = (50, 90, 99)


def latency_bucket(ms: float) -> int:
    """The bucket index holding a latency of `ms` milliseconds."""
    return math.ceil(math.log2(max(ms, 0.001)) * LATENCY_BUCKETS_PER_DOUBLING)


def _bucket_middle(index: int) -> float:
    return float(2 ** ((index - 0.5) / LATENCY_BUCKETS_PER_DOUBLING))


def _fold_calls(tasks: list[Finished]) -> Partial:
    partial = _fold_counts(tasks)
    timed = [task.duration_ms for task in tasks if task.duration_ms is not None]
    if timed:
        buckets: dict[str, int] = {}
        for ms in timed:
            key = str(latency_bucket(ms))
            buckets[key] = buckets.get(key, 0) + 1
        partial["latency"] = {
            "n": len(timed),
            "sum": sum(timed),
            "min": min(timed),
            "max": max(timed),
            "buckets": buckets,
        }
    return partial


def _combine_calls(left: Partial, right: Partial) -> Partial:
    merged = _combine_counts(left, right)
    a, b = left.get("latency"), right.get("latency")
    if a and b:
        merged["latency"] = {
            "n": a["n"] + b["n"],
            "sum": a["sum"] + b["sum"],
            "min": min(a["min"], b["min"]),
            "max": max(a["max"], b["max"]),
            "buckets": add_counts(a["buckets"], b["buckets"]),
        }
    elif a or b:
        merged["latency"] = a or b
    return merged


def _present_calls(combined: Partial) -> dict[str, Any]:
    answer = _present_counts(combined)
    latency = combined.get("latency")
    if not latency:
        answer["latency_ms"] = None
        return answer
    n = latency["n"]
    ordered = sorted((int(index), count) for index, count in latency["buckets"].items())
    figures: dict[str, Any] = {
        "count": n,
        "mean": round(latency["sum"] / n, 3),
        "min": round(latency["min"], 3),
        "max": round(latency["max"], 3),
    }
    for q in PERCENTILES:
        rank, seen = max(1, math.ceil(q / 100 * n)), 0
        for index, count in ordered:
            seen += count
            if seen >= rank:
                middle = _bucket_middle(index)
                figures[f"p{q}"] = round(min(max(middle, latency["min"]), latency["max"]), 3)
                break
    figures["percentiles"] = LATENCY_ERROR
    answer["latency_ms"] = figures
    return answer


SERVICE_CALLS = MergeRule(fold=_fold_calls, combine=_combine_calls, present=_present_calls)


# ---- data task types: the answer of one task over every row -------------------------------------


class Summary(Protocol):
    """A handler's mergeable summary of the rows one task saw (app/handlers)."""

    def merge(self, other: Any) -> None: ...

    def presented(self) -> dict[str, Any]: ...

    def to_json(self) -> dict[str, Any]: ...


def summary_rule(decode: Callable[[Any], Summary]) -> MergeRule:
    """The rule of a data task type: counting, plus the merged summaries its results carry.

    A completed task's result holds its summary as `merge_state`; the answer's `result` is the
    merged summary presented as one task over all the rows would present it, and
    `merged_tasks` says how many results went into it (a result without a summary, such as a
    manual completion's, is counted but cannot be merged).
    """

    def decoded(raw: Any) -> Summary | None:
        # A result this process has just produced still holds its summary (summaries.Packed).
        kept = take_summary(raw)
        if kept is not None:
            return kept
        try:
            return decode(raw) if raw is not None else None
        except (KeyError, TypeError, ValueError, IndexError, zlib.error):
            return None

    def merged(summaries: Iterable[Summary | None]) -> Summary | None:
        total = None
        for summary in summaries:
            if summary is None:
                continue
            if total is None:
                total = summary
            else:
                total.merge(summary)
        return total

    def fold(tasks: list[Finished]) -> Partial:
        partial = _fold_counts(tasks)
        found = [
            decoded(task.result.get("merge_state"))
            for task in tasks
            if task.state == "completed" and isinstance(task.result, dict)
        ]
        total = merged(found)
        partial["merged"] = sum(1 for summary in found if summary is not None)
        partial["state"] = None if total is None else pack(total.to_json())
        return partial

    def combine_all(partials: list[Partial]) -> Partial:
        counts: Partial = {}
        for partial in partials:
            counts = _combine_counts(counts, partial)
        counts["merged"] = sum(partial.get("merged", 0) for partial in partials)
        total = merged(decoded(partial.get("state")) for partial in partials)
        counts["state"] = None if total is None else pack(total.to_json())
        return counts

    def present(partial: Partial) -> dict[str, Any]:
        answer = _present_counts(partial)
        answer["merged_tasks"] = partial.get("merged", 0)
        total = decoded(partial.get("state"))
        answer["result"] = None if total is None else total.presented()
        return answer

    return MergeRule(
        fold=fold,
        combine=lambda left, right: combine_all([left, right]),
        present=present,
        combine_all=combine_all,
    )


_DATA = summary_rule(DataSummary.from_json)

# Task type -> its rule. Types absent here use COUNTING.
RULES: Mapping[str, MergeRule] = {
    **dict.fromkeys(DOWNSTREAM, SERVICE_CALLS),
    "data_processing": _DATA,
    "mass_data_processing": _DATA,
    "distributed_analysis": summary_rule(AnalysisSummary.from_json),
    "reporting": summary_rule(ReportSummary.from_json),
}


def rule_for(task_type: str) -> MergeRule:
    """The merge rule of a task type (COUNTING when it registered none)."""
    return RULES.get(task_type, COUNTING)


def fold(task_type: str, tasks: list[Finished]) -> Partial:
    """The partial aggregate of some finished tasks of one type."""
    return rule_for(task_type).fold(tasks)


def combine(task_type: str, partials: Iterable[Partial]) -> Partial:
    """One partial standing for any number of partials of one type (the empty fold for none)."""
    rule = rule_for(task_type)
    if rule.combine_all is not None:
        some = list(partials)
        return rule.combine_all(some) if some else rule.fold([])
    combined: Partial | None = None
    for partial in partials:
        combined = partial if combined is None else rule.combine(combined, partial)
    return combined if combined is not None else rule.fold([])


@dataclass(frozen=True)
class Folded:
    """The partial of exactly these tasks of one type, folded before they were recorded."""

    task_type: str
    task_ids: frozenset[int]
    partial: Partial


def fold_ahead(tasks: Iterable[tuple[int, Finished]]) -> list[Folded]:
    """(task id, finished task) pairs folded per type, ahead of the statement that records them.

    The record statement holds its swarm's and mass-action's rows until it commits; folding a
    chunk of data results while holding them (a tenth of a second for 200 parts of a large file)
    made the other pool processes wait for the lock. Their partial is used if exactly these tasks
    moved (app/services/mass_action_counts.py), and folded again from what moved otherwise.
    """
    by_type: dict[str, tuple[list[int], list[Finished]]] = {}
    for task_id, task in tasks:
        ids, finished = by_type.setdefault(task.task_type, ([], []))
        ids.append(task_id)
        finished.append(task)
    return [
        Folded(type_, frozenset(ids), fold(type_, finished))
        for type_, (ids, finished) in by_type.items()
    ]


def merge(task_type: str, partials: Iterable[Partial]) -> dict[str, Any]:
    """One answer from any number of partials of one type (an empty answer for none)."""
    return rule_for(task_type).present(combine(task_type, partials))
