"""A dataset split over a swarm gives the answer of one task over the whole file.

Handler level: every mergeable operation of every data task type, on generated files full of the
awkward cases (duplicates across parts, blank rows, quoted newlines, short and long rows, equal
numbers spelled differently, more distinct values than are counted exactly), split into parts,
each part's result folded and the partials merged in scrambled groupings, compared with one task
over every row. End to end: the same through a real worker on a swarm.
"""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from app.extensions import db
from app.handlers import TaskFailed, TaskInput
from app.handlers.analysis import analyze
from app.handlers.data import process
from app.handlers.datasets import open_dataset, row_range
from app.handlers.reporting import report
from app.handlers.summaries import EXACT_DISTINCT_LIMIT, Packed, take_summary
from app.services import aggregates
from app.services.aggregates import Finished
from tests.workers import WorkerProcess, wait_for

HANDLERS = {
    "data_processing": process,
    "mass_data_processing": process,
    "distributed_analysis": analyze,
    "reporting": report,
}
# Keys only a part's own result has.
PART_ONLY = ("slice", "merge_state")

FIELDS = ["Customer ID", " Region ", "plan", "amount", "score", "note", "code"]


def awkward_rows(n: int, seed: int = 5) -> list[list[str]]:
    """Rows with every case a split could get wrong; row i's cells depend on the seed only."""
    rnd = random.Random(seed)
    rows: list[list[str]] = []
    for i in range(n):
        kind = rnd.random()
        if rows and kind < 0.08:
            rows.append(list(rnd.choice(rows)))  # an exact duplicate of any earlier row
            continue
        if rows and kind < 0.12:
            # The same row with extra whitespace: a duplicate once cleaned.
            rows.append([f"  {cell} " for cell in rnd.choice(rows)])
            continue
        if kind < 0.14:
            rows.append(["", " ", "", "  ", "", "", ""])  # blank: clean drops it
            continue
        amount = rnd.choice(
            ["1", "1.0", "-0.0", "0", "2.5", "1e2", "", " 7 ", str(rnd.randint(-50, 500))]
        )
        score = f"{rnd.uniform(-3, 3):.3f}"
        note = rnd.choice(["plain", 'quoted, "comma"', "two\nlines", "ünïcode ✓", "", "007"])
        row = [
            f"C{i:06d}",
            rnd.choice(["north", "south", " east", "west "]),
            rnd.choice(["a", "b"]),
            amount,
            score,
            note,
            str(rnd.randint(0, 3)),
        ]
        if kind < 0.16:
            row = row[:3]  # short: the missing cells read as None
        elif kind < 0.18:
            row = [*row, "surplus", "cells"]  # long: the surplus goes under _extra
        rows.append(row)
    return rows


def write_awkward_csv(path: Path, n: int, seed: int = 5, newline: str = "\r\n") -> Path:
    with path.open("w", newline="", encoding="utf-8-sig") as handle:
        writer = csv.writer(handle, lineterminator=newline)
        writer.writerow(FIELDS)
        for number, row in enumerate(awkward_rows(n, seed)):
            writer.writerow(row)
            if number % 97 == 0:
                handle.write(newline)  # a blank line, which readers skip
    return path


def write_awkward_json(path: Path, n: int, seed: int = 9) -> Path:
    records = []
    for cells in awkward_rows(n, seed):
        row: dict[str, Any] = dict(zip(FIELDS, cells, strict=False))
        if len(records) % 5 == 0:
            row["amount"] = 3 if len(records) % 2 else 3.0  # numbers, equal but typed apart
        if len(records) % 11 == 0:
            row["tags"] = ["x", {"y": 1}]
        records.append(row)
    path.write_text(
        json.dumps({"meta": {"n": n}, "records": records}, indent=1, ensure_ascii=False)
    )
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "data"
    directory.mkdir()
    return directory


def run(task_type: str, data: dict[str, Any], data_dir: Path, index=None, count=None) -> Any:
    task = TaskInput(task_type, data, index, data_dir, slice_count=count)
    # Results are stored as JSON and read back before they are merged.
    return json.loads(json.dumps(HANDLERS[task_type](task)))


def split_answer(task_type: str, data: dict[str, Any], data_dir: Path, parts: int, seed: int = 1):
    """Run every part, fold the results in random groups, merge the partials in random order."""
    results = [run(task_type, data, data_dir, index, parts) for index in range(parts)]
    finished = [Finished(task_type, "completed", result, None) for result in results]
    rnd = random.Random(seed)
    rnd.shuffle(finished)
    partials, position = [], 0
    while position < len(finished):
        size = rnd.randint(1, 5)
        partial = aggregates.fold(task_type, finished[position : position + size])
        partials.append(json.loads(json.dumps(partial)))
        position += size
    # Combine some pairwise too: grouping must not matter.
    while len(partials) > 3:
        left, right = partials.pop(), partials.pop()
        partials.insert(
            rnd.randrange(len(partials) + 1), aggregates.rule_for(task_type).combine(left, right)
        )
    answer = aggregates.merge(task_type, partials)
    assert answer["merged_tasks"] == parts
    assert answer["tasks"] == {"completed": parts}
    return answer["result"], results


def whole(task_type: str, data: dict[str, Any], data_dir: Path) -> dict[str, Any]:
    result = run(task_type, data, data_dir)
    # distributed_analysis always shows its slice: [0, rows] for the whole dataset.
    part_only = ("merge_state",) if task_type == "distributed_analysis" else PART_ONLY
    return {key: value for key, value in result.items() if key not in part_only}


DATA_CASES = [
    ["clean"],
    ["transform"],
    ["enrich"],
    ["analyze"],
    ["clean", "analyze"],
    ["clean", "enrich", "analyze"],
    ["transform", "clean", "analyze"],
    ["enrich", "clean", "analyze"],
    ["analyze", "clean"],
    ["clean", "transform", "enrich", "clean", "analyze"],
    ["transform", "enrich", "transform", "analyze"],
]


@pytest.mark.parametrize("operations", DATA_CASES, ids=lambda ops: "+".join(ops))
@pytest.mark.parametrize("output_format", ["json", "summary"])
def test_split_data_processing_equals_one_pass_over_the_csv(data_dir, operations, output_format):
    write_awkward_csv(data_dir / "awkward.csv", 1500)
    data = {"dataset": "awkward.csv", "operations": operations, "output_format": output_format}

    expected = whole("mass_data_processing", data, data_dir)
    for parts in (1, 7, 64):
        merged, _ = split_answer("mass_data_processing", data, data_dir, parts)
        assert merged == expected, (operations, parts)
    if "clean" in operations and "enrich" not in operations[: operations.index("clean")]:
        # The file really has rows to drop (numbered rows, after enrich, are all different).
        assert expected["rows_out"] < expected["rows_in"]


@pytest.mark.parametrize(
    "operations", [["clean", "enrich", "analyze"], ["transform", "clean", "analyze"]]
)
def test_split_data_processing_equals_one_pass_over_json_and_inline_records(data_dir, operations):
    path = write_awkward_json(data_dir / "awkward.json", 900)
    inline = json.loads(path.read_text())["records"]
    for data in (
        {"input_file": "awkward.json", "operations": operations},
        {"records": inline, "operations": operations},
    ):
        expected = whole("data_processing", data, data_dir)
        for parts in (3, 40):
            merged, _ = split_answer("data_processing", data, data_dir, parts)
            assert merged == expected, (list(data), parts)


def test_distinct_counts_are_exact_below_the_limit_and_labelled_approximate_above(data_dir):
    rows = EXACT_DISTINCT_LIMIT + 2500
    with (data_dir / "wide.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "group"])
        writer.writerows([f"id-{i}", str(i % 50)] for i in range(rows))
    data = {"dataset": "wide.csv", "operations": ["analyze"], "output_format": "summary"}

    expected = whole("data_processing", data, data_dir)
    merged, results = split_answer("data_processing", data, data_dir, 37)

    assert merged == expected
    assert expected["columns"]["group"] == {
        "count": rows,
        "non_empty": rows,
        "distinct": 50,
        "min": 0,
        "max": 49,
        "mean": pytest.approx(24.5, abs=0.05),
    }
    assert expected["columns"]["id"]["distinct_approximate"] is True
    assert abs(expected["columns"]["id"]["distinct"] - rows) < rows * 0.03
    # Each part counts its own few values exactly.
    assert "distinct_approximate" not in results[0]["columns"]["id"]


@pytest.mark.parametrize("analysis_type", ["summary", "sentiment"])
def test_split_distributed_analysis_equals_one_pass(data_dir, analysis_type):
    write_awkward_csv(data_dir / "awkward.csv", 400 if analysis_type == "sentiment" else 1500)
    data = {"dataset": "awkward.csv", "analysis_type": analysis_type}
    if analysis_type == "sentiment":
        data["text_field"] = "note"

    expected = whole("distributed_analysis", data, data_dir)
    for parts in (1, 9, 50):
        merged, results = split_answer("distributed_analysis", data, data_dir, parts)
        assert merged == expected
        sizes = [result["rows"] for result in results]
        assert max(sizes) - min(sizes) <= 1
        assert [result["slice"] for result in results] == [
            [sum(sizes[:i]), sum(sizes[: i + 1])] for i in range(parts)
        ]


def test_distributed_analysis_with_chunk_size_keeps_slices_of_that_size(data_dir):
    write_awkward_csv(data_dir / "awkward.csv", 1000)
    data = {"dataset": "awkward.csv", "analysis_type": "summary", "chunk_size": 150}
    total = open_dataset(data, data_dir).total

    expected = whole("distributed_analysis", data, data_dir)
    merged, results = split_answer("distributed_analysis", data, data_dir, 10)

    assert [result["slice"] for result in results[:2]] == [[0, 150], [150, 300]]
    assert results[-1]["rows"] == 0  # spare bots past the end get empty slices
    assert merged == expected and merged["rows"] == total


@pytest.mark.parametrize("group_by", [None, " Region ", "code"])
def test_split_reporting_equals_one_pass(data_dir, group_by):
    write_awkward_csv(data_dir / "awkward.csv", 1500)
    data: dict[str, Any] = {"input_file": "awkward.csv", "metric": "score"}
    if group_by:
        data["group_by"] = group_by

    expected = whole("reporting", data, data_dir)
    for parts in (1, 6, 80):
        merged, _ = split_answer("reporting", data, data_dir, parts)
        assert merged == expected


@pytest.mark.parametrize(
    ("task_type", "data"),
    [
        ("mass_data_processing", {"operations": ["clean", "enrich", "analyze"]}),
        ("distributed_analysis", {"analysis_type": "summary"}),
        ("reporting", {"metric": "score", "group_by": " Region "}),
    ],
)
def test_a_worker_folds_the_summaries_its_tasks_just_made_as_if_read_back(
    data_dir, task_type, data
):
    write_awkward_csv(data_dir / "awkward.csv", 1500)
    data = {"dataset": "awkward.csv", **data}
    fresh = [
        HANDLERS[task_type](TaskInput(task_type, data, index, data_dir, slice_count=12))
        for index in range(12)
    ]
    stored = json.loads(json.dumps(fresh))
    assert all(type(result["merge_state"]) is Packed for result in fresh)

    def answer(results: list[Any]) -> dict[str, Any]:
        finished = [Finished(task_type, "completed", result, None) for result in results]
        return aggregates.merge(task_type, [aggregates.fold(task_type, finished)])

    in_memory = answer(fresh)
    # Each kept summary is taken once (the fold merged into it): a second fold unpacks.
    assert all(take_summary(result["merge_state"]) is None for result in fresh)
    assert in_memory == answer(fresh) == answer(stored)
    assert in_memory["merged_tasks"] == 12


def test_even_split_ranges_are_contiguous_and_differ_by_at_most_one_row():
    for total in (0, 1, 5, 99, 100, 101, 12_345):
        for count in (1, 2, 3, 7, 100, 250):
            ranges = [
                row_range(total, TaskInput("x", {}, index, Path("."), slice_count=count), None)
                for index in range(count)
            ]
            assert ranges[0][0] == 0 and ranges[-1][1] == total
            assert all(ranges[i][1] == ranges[i + 1][0] for i in range(count - 1))
            sizes = [end - start for start, end in ranges]
            assert max(sizes) - min(sizes) <= 1


def test_a_part_outside_the_split_fails_its_task(data_dir):
    write_awkward_csv(data_dir / "awkward.csv", 10)
    with pytest.raises(TaskFailed, match="outside the 3 parts"):
        run("data_processing", {"dataset": "awkward.csv"}, data_dir, index=3, count=3)


def test_a_part_reads_only_its_own_bytes(data_dir):
    path = write_awkward_csv(data_dir / "awkward.csv", 600, newline="\n")
    data = {"dataset": "awkward.csv", "operations": ["analyze"]}
    before = run("data_processing", data, data_dir, 0, 6)
    # Spoil the last part's bytes (same size and time: the same version for the index).
    index = open_dataset(data, data_dir).index  # type: ignore[attr-defined]
    stat = path.stat()
    with path.open("r+b") as handle:
        handle.seek(index.offsets[500])
        handle.write(b"\xff" * (index.offsets[600] - index.offsets[500]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    assert run("data_processing", data, data_dir, 0, 6) == before
    with pytest.raises(TaskFailed, match="not UTF-8"):
        run("data_processing", data, data_dir, 5, 6)


def test_range_reads_match_a_whole_file_read(data_dir):
    path = write_awkward_csv(data_dir / "awkward.csv", 700, newline="\r")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        expected = [dict(row) for row in csv.DictReader(handle, restkey="_extra")]
    dataset = open_dataset({"dataset": "awkward.csv"}, data_dir)

    assert dataset.total == len(expected)
    pieces = [list(dataset.rows(start, start + 33)) for start in range(0, dataset.total, 33)]
    assert [row for piece in pieces for row in piece] == expected


# ---- end to end --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker(test_env):
    process = WorkerProcess(test_env)
    process.start()
    yield process
    process.stop()


def _swarm(client, count: int) -> str:
    body = {
        "name": "split",
        "count": count,
        "tier": "advanced",
        "capabilities": ["data_processing", "analytics"],
    }
    response = client.post("/swarms", json=body)
    assert response.status_code == 201
    return response.get_json()["id"]


def _results(swarm_id: str) -> list[tuple[str, Any]]:
    return db.session.execute(
        text("SELECT status, result FROM tasks WHERE swarm_id = :s ORDER BY slice_index"),
        {"s": swarm_id},
    ).all()


@pytest.mark.slow
def test_mass_data_processing_on_a_swarm_merges_to_one_pass_end_to_end(
    client, sample_data_dir, worker
):
    write_awkward_csv(sample_data_dir / "e2e.csv", 2000, seed=11)
    data = {
        "dataset": "e2e.csv",
        "operations": ["clean", "enrich", "analyze"],
        "output_format": "json",
    }
    swarm_id = _swarm(client, 45)
    # Retire one bot and pause another: the split covers the 43 that are active, with no gap.
    bots = client.get(f"/bots?swarm_id={swarm_id}&limit=3").get_json()["items"]
    assert client.delete(f"/bots/{bots[1]['id']}").status_code == 200
    assert client.patch(f"/bots/{bots[2]['id']}", json={"status": "paused"}).status_code == 200
    single_bot = client.post(
        "/bots", json={"name": "one", "tier": "advanced", "capabilities": ["data_processing"]}
    ).get_json()["id"]

    created = client.post(
        f"/swarms/{swarm_id}/tasks", json={"type": "mass_data_processing", "data": data}
    ).get_json()
    assert created["assignments"] == 43
    single_id = client.post(
        f"/bots/{single_bot}/tasks", json={"type": "data_processing", "data": data}
    ).get_json()["task_id"]

    wait_for(
        lambda: client.get(f"/swarms/{swarm_id}").get_json()["total_tasks_completed"] == 43, 60
    )
    single = wait_for(
        lambda: (
            (body := client.get(f"/task/{single_id}").get_json())["status"] == "completed" and body
        ),
        60,
    )
    rows = _results(swarm_id)
    assert {status for status, _ in rows} == {"completed"}
    sizes = [result["rows_in"] for _, result in rows]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == single["result"]["rows_in"]
    partials = [
        aggregates.fold(
            "mass_data_processing",
            [
                Finished("mass_data_processing", "completed", result, None)
                for _, result in rows[i : i + 10]
            ],
        )
        for i in range(0, len(rows), 10)
    ]
    merged = aggregates.merge("mass_data_processing", partials)["result"]
    assert merged == single["result"]
    assert merged["rows_out"] < merged["rows_in"]  # duplicates across parts were found
    # The mass-action's own aggregate (partials written with the outcomes) says the same.
    view = client.get(f"/mass-actions/{created['mass_action_id']}").get_json()
    assert view["status"] == "completed"
    assert view["aggregate"]["merged_tasks"] == 43
    assert view["aggregate"]["result"] == single["result"]


@pytest.mark.slow
def test_distributed_analysis_without_chunk_size_splits_evenly_end_to_end(
    client, sample_data_dir, worker
):
    swarm_id = _swarm(client, 30)
    data = {"dataset": "large_dataset.csv", "analysis_type": "summary"}
    assert (
        client.post(
            f"/swarms/{swarm_id}/tasks", json={"type": "distributed_analysis", "data": data}
        ).status_code
        == 202
    )
    single_bot = client.post(
        "/bots", json={"name": "one", "tier": "L20", "capabilities": ["analytics"]}
    ).get_json()["id"]
    single_id = client.post(
        f"/bots/{single_bot}/tasks", json={"type": "distributed_analysis", "data": data}
    ).get_json()["task_id"]

    wait_for(
        lambda: client.get(f"/swarms/{swarm_id}").get_json()["total_tasks_completed"] == 30, 60
    )
    single = wait_for(
        lambda: (
            (body := client.get(f"/task/{single_id}").get_json())["status"] == "completed" and body
        ),
        60,
    )
    rows = _results(swarm_id)
    slices = [result["slice"] for _, result in rows]
    assert slices[0][0] == 0 and slices[-1][1] == 5000
    assert all(slices[i][1] == slices[i + 1][0] for i in range(29))
    assert {end - start for start, end in slices} <= {166, 167}
    partial = aggregates.fold(
        "distributed_analysis",
        [Finished("distributed_analysis", "completed", r, None) for _, r in rows],
    )
    assert aggregates.merge("distributed_analysis", [partial])["result"] == single["result"]


def test_the_drop_list_is_the_same_found_while_indexing_or_afterwards(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for directory in (first, second):
        directory.mkdir()
        write_awkward_csv(directory / "awkward.csv", 3000, seed=3)
    data = {"dataset": "awkward.csv", "operations": ["clean", "analyze"]}
    # a: the first task cleans, so the drop list is found in the pass that indexes the file.
    found_while_indexing = whole("data_processing", data, first)
    # b: the file is indexed by a task that does not clean; the drop list comes in its own pass.
    whole("data_processing", {"dataset": "awkward.csv", "operations": ["analyze"]}, second)
    assert not list((second / ".index").glob("*.steps"))
    found_afterwards = whole("data_processing", data, second)

    assert found_while_indexing == found_afterwards
    lists = [
        next((directory / ".index").glob("*.steps")).read_bytes() for directory in (first, second)
    ]
    assert lists[0] == lists[1] and set(lists[0]) == {0, 1}  # kept, or dropped by the one clean


def test_a_result_that_is_not_a_summary_is_counted_but_not_merged(data_dir):
    write_awkward_csv(data_dir / "awkward.csv", 50)
    data = {"dataset": "awkward.csv", "operations": ["analyze"]}
    good = run("data_processing", data, data_dir, 0, 2)
    import base64
    import zlib

    bomb = "z1:" + base64.b64encode(zlib.compress(b" " * (80 * 1024 * 1024), 9)).decode()
    odd = [
        {"merge_state": bomb},
        {"merge_state": "z1:not-base64!"},
        {"merge_state": {"rows_in": "x"}},
        "text",
    ]
    finished = [Finished("data_processing", "completed", result, None) for result in [good, *odd]]

    answer = aggregates.merge("data_processing", [aggregates.fold("data_processing", finished)])

    assert answer["tasks"] == {"completed": 5}
    assert answer["merged_tasks"] == 1
    assert answer["result"]["rows_in"] == good["rows_in"]
