"""Schemathesis hooks: the rules of the API that JSON Schema cannot state, taught to the generator.

Loaded through schemathesis.toml by tests/test_fuzz.py, `make fuzz` and `schemathesis run` in this
directory. They touch only cases meant to be valid (positive ones), so negative cases still reach
the API as generated and must be refused. Case-level hooks, because every phase applies them.
"""

from __future__ import annotations

from typing import Any

import schemathesis


def _positive(case) -> bool:
    meta = case.meta
    return meta is None or meta.generation.mode.is_positive


@schemathesis.hook("filter_case").apply_to(path="/scaling", method="GET")
def bounds_in_order(context, case) -> bool:
    """min_workers may not exceed max_workers (whose defaults are 0 and 20)."""
    query = case.query if isinstance(case.query, dict) else {}
    low, high = _number(query.get("min_workers", 0)), _number(query.get("max_workers", 20))
    if not _positive(case) or low is None or high is None:
        return True
    return low <= high


def _number(value: Any) -> float | None:
    # Query values come as numbers or, from some phases, already as text.
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@schemathesis.hook("map_case").apply_to(path="/orchestrate", method="POST")
def steps_form_a_dag(context, case):
    """Step names are unique, `depends_on` names earlier steps, no `$ref` names a non-dependency."""
    body = case.body
    if not _positive(case) or not isinstance(body, dict) or not isinstance(body.get("tasks"), list):
        return case
    seen: list[str] = []
    for index, step in enumerate(body["tasks"]):
        if not isinstance(step, dict):
            return case
        name = step.get("name")
        if not isinstance(name, str) or name in seen:
            name = step["name"] = f"step{index + 1}"
        if isinstance(step.get("depends_on"), list):
            # As many as were generated, from the earlier steps only: no cycle can form.
            step["depends_on"] = seen[: len(step["depends_on"])]
        if isinstance(step.get("params"), dict):
            step["params"] = _without_refs(step["params"])
        seen.append(name)
    return case


def _without_refs(value: Any) -> Any:
    # {"$ref": "steps.<name>.result..."} must name a dependency; generated ones never do.
    if isinstance(value, dict):
        return {key: _without_refs(item) for key, item in value.items() if key != "$ref"}
    if isinstance(value, list):
        return [_without_refs(item) for item in value]
    return value
