"""Task-type handlers on small real data, inline and from files in a temporary DATA_DIR."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import pytest

from app.handlers import TaskFailed, TaskInput
from app.handlers.analysis import analyze
from app.handlers.data import process
from app.handlers.datasets import open_dataset
from app.handlers.echo import echo
from app.handlers.files import resolve_data_file
from app.handlers.reporting import report


def make_task(
    task_type: str, data: dict[str, Any], data_dir: Path, slice_index: int | None = None
) -> TaskInput:
    return TaskInput(task_type=task_type, data=data, slice_index=slice_index, data_dir=data_dir)


def load_records(path: Path) -> list[dict[str, Any]]:
    """Every row of a data file, read through its offsets index as tasks read it."""
    dataset = open_dataset({"dataset": path.name}, path.parent)
    return list(dataset.rows(0, dataset.total))


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "data"
    directory.mkdir()
    return directory


# --- files -------------------------------------------------------------------------------


def test_parent_escape_is_rejected(data_dir):
    (data_dir.parent / "secret.csv").write_text("a\n1\n")

    with pytest.raises(TaskFailed, match="outside DATA_DIR"):
        resolve_data_file(data_dir, "../secret.csv")


def test_absolute_path_is_rejected(data_dir):
    inside = data_dir / "a.csv"
    inside.write_text("a\n1\n")

    with pytest.raises(TaskFailed, match="relative to DATA_DIR"):
        resolve_data_file(data_dir, str(inside))


def test_symlink_pointing_outside_is_rejected(data_dir):
    secret = data_dir.parent / "secret.csv"
    secret.write_text("a\n1\n")
    (data_dir / "link.csv").symlink_to(secret)

    with pytest.raises(TaskFailed, match="outside DATA_DIR"):
        resolve_data_file(data_dir, "link.csv")


def test_symlink_inside_data_dir_is_followed(data_dir):
    real = data_dir / "real.csv"
    real.write_text("a\n1\n")
    (data_dir / "alias.csv").symlink_to(real)

    assert resolve_data_file(data_dir, "alias.csv") == real.resolve()


def test_nul_byte_is_rejected(data_dir):
    with pytest.raises(TaskFailed, match="NUL"):
        resolve_data_file(data_dir, "a.csv\x00.txt")


def test_missing_file_names_the_file(data_dir):
    with pytest.raises(TaskFailed) as caught:
        resolve_data_file(data_dir, "x.csv")

    assert str(caught.value) == "data file 'x.csv' not found in DATA_DIR"


def test_directory_is_not_a_data_file(data_dir):
    (data_dir / "sub").mkdir()

    with pytest.raises(TaskFailed, match="not found"):
        resolve_data_file(data_dir, "sub")


def test_csv_and_both_json_shapes_load(data_dir):
    write_csv(data_dir / "a.csv", [{"name": "Ann", "age": "31"}])
    (data_dir / "list.json").write_text(json.dumps([{"name": "Bo"}]))
    (data_dir / "wrapped.json").write_text(json.dumps({"records": [{"name": "Cy"}]}))

    assert load_records(data_dir / "a.csv") == [{"name": "Ann", "age": "31"}]
    assert load_records(data_dir / "list.json") == [{"name": "Bo"}]
    assert load_records(data_dir / "wrapped.json") == [{"name": "Cy"}]


def test_json_that_is_not_a_list_of_objects_is_rejected(data_dir):
    (data_dir / "bad.json").write_text(json.dumps([1, 2]))

    with pytest.raises(TaskFailed, match="list of objects"):
        load_records(data_dir / "bad.json")


def test_unsupported_extension_is_rejected(data_dir):
    (data_dir / "notes.txt").write_text("hello")

    with pytest.raises(TaskFailed, match="unsupported type '.txt'"):
        load_records(data_dir / "notes.txt")


def test_a_replaced_file_is_indexed_again(data_dir):
    path = write_csv(data_dir / "a.csv", [{"n": "1"}])

    assert load_records(path) == [{"n": "1"}]
    assert len(list((data_dir / ".index").glob("*.idx"))) == 1

    write_csv(path, [{"n": "1"}, {"n": "22"}])
    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)
    assert load_records(path) == [{"n": "1"}, {"n": "22"}]
    # The old version's index is gone: one file version, one index.
    assert len(list((data_dir / ".index").glob("*.idx"))) == 1


# --- data_processing ---------------------------------------------------------------------


def run(data: dict[str, Any], data_dir: Path) -> dict[str, Any]:
    return process(make_task("data_processing", data, data_dir))


def test_clean_strips_and_drops_empty_and_duplicate_rows(data_dir):
    records = [
        {" name ": "  Ann ", "city": "Oslo"},
        {" name ": "Ann", "city": "Oslo "},
        {" name ": " ", "city": None},
        {" name ": "Bo", "city": ""},
    ]

    result = run({"records": records, "operations": ["clean"]}, data_dir)

    assert result["rows_in"] == 4
    assert result["rows_out"] == 2
    assert result["records"] == [{"name": "Ann", "city": "Oslo"}, {"name": "Bo", "city": ""}]
    assert "columns" not in result


def test_transform_renames_keys_and_converts_numbers(data_dir):
    records = [{"First Name": "Ann", "totalAmount": "12.5", "Item-Count": "3", "Zip": "0213"}]

    result = run({"records": records, "operations": ["transform"]}, data_dir)

    assert result["records"] == [
        {"first_name": "Ann", "total_amount": 12.5, "item_count": 3, "zip": "0213"}
    ]


def test_analyze_reports_counts_and_numeric_ranges(data_dir):
    records = [
        {"name": "Ann", "age": "30"},
        {"name": "Bo", "age": "40"},
        {"name": "Ann", "age": ""},
        {"name": "Cy"},
    ]

    result = run({"records": records, "operations": ["analyze"]}, data_dir)

    assert result["columns"] == {
        "name": {"count": 4, "non_empty": 4, "distinct": 3},
        "age": {"count": 3, "non_empty": 2, "distinct": 2, "min": 30, "max": 40, "mean": 35.0},
    }
    assert result["rows_out"] == 4


def test_enrich_adds_position_and_fill_ratio(data_dir):
    records = [{"a": 1, "b": "", "c": "x"}, {"a": None, "b": "", "c": ""}]

    result = run({"records": records, "operations": ["enrich"]}, data_dir)

    assert [(r["_row"], r["_filled"]) for r in result["records"]] == [(1, 0.667), (2, 0.0)]


def test_default_operations_are_clean_then_analyze(data_dir):
    result = run({"records": [{"v": " 1 "}, {"v": "1"}, {"v": "3"}]}, data_dir)

    assert result["operations"] == ["clean", "analyze"]
    assert result["rows_out"] == 2
    assert result["columns"]["v"] == {
        "count": 2,
        "non_empty": 2,
        "distinct": 2,
        "min": 1,
        "max": 3,
        "mean": 2.0,
    }


def test_operations_run_in_the_given_order(data_dir):
    duplicates = [{"v": "a"}, {"v": "a"}]

    enrich_first = run({"records": duplicates, "operations": ["enrich", "clean"]}, data_dir)
    clean_first = run({"records": duplicates, "operations": ["clean", "enrich"]}, data_dir)

    # Numbering first makes the rows differ, so nothing is left to deduplicate.
    assert enrich_first["rows_out"] == 2
    assert clean_first["rows_out"] == 1


def test_unknown_operation_names_the_allowed_ones(data_dir):
    with pytest.raises(TaskFailed) as caught:
        run({"records": [], "operations": ["clean", "explode"]}, data_dir)

    assert "'explode'" in str(caught.value)
    assert "analyze, clean, enrich, transform" in str(caught.value)


def test_summary_format_omits_records_and_json_caps_them(data_dir):
    records = [{"n": i} for i in range(150)]

    summary = run({"records": records, "output_format": "summary"}, data_dir)
    full = run({"records": records, "operations": ["enrich"]}, data_dir)

    assert "records" not in summary and summary["rows_out"] == 150
    assert len(full["records"]) == 100
    assert full["records_total"] == 150
    assert full["records"][-1] == {"n": 99, "_row": 100, "_filled": 1.0}


def test_unknown_output_format_fails(data_dir):
    with pytest.raises(TaskFailed, match="output_format"):
        run({"records": [], "output_format": "xml"}, data_dir)


def test_mass_processing_reads_a_csv_dataset(data_dir):
    write_csv(
        data_dir / "customers.csv",
        [
            {"Name": " Ann ", "Spend": "10"},
            {"Name": "Bo", "Spend": "30"},
            {"Name": "", "Spend": ""},
        ],
    )
    task = make_task(
        "mass_data_processing",
        {"dataset": "customers.csv", "operations": ["clean", "transform", "enrich", "analyze"]},
        data_dir,
        slice_index=7,
    )

    result = process(task)

    assert result["rows_in"] == 3
    assert result["rows_out"] == 2
    assert result["records"][0] == {"name": "Ann", "spend": 10, "_row": 1, "_filled": 1.0}
    assert result["columns"]["spend"]["mean"] == 20.0


def test_file_results_are_not_shared_between_tasks(data_dir):
    (data_dir / "a.json").write_text(json.dumps([{"v": "x"}]))
    data = {"input_file": "a.json", "operations": ["clean"]}

    first = run(data, data_dir)
    first["records"][0]["v"] = "changed"
    first["rows_out"] = -1

    assert run(data, data_dir)["records"] == [{"v": "x"}]
    assert run(data, data_dir)["rows_out"] == 1
    assert load_records(data_dir / "a.json") == [{"v": "x"}]


def test_input_file_escape_fails_the_task(data_dir):
    with pytest.raises(TaskFailed, match="outside DATA_DIR"):
        run({"input_file": "../../etc/passwd.csv"}, data_dir)


def test_no_input_fails_the_task(data_dir):
    with pytest.raises(TaskFailed, match="'records', 'input_file' or 'dataset'"):
        run({"operations": ["clean"]}, data_dir)


# --- distributed_analysis ----------------------------------------------------------------


POSITIVE = ["I love this, it is wonderful and amazing!", "Great service, very happy :)"]
NEGATIVE = ["This is terrible, I hate it.", "Awful experience, worst purchase ever."]
NEUTRAL = ["The box is on the table."]


@pytest.fixture
def reviews(data_dir: Path) -> Path:
    rows = [{"id": str(i), "review": f"Review number {i}."} for i in range(25)]
    return write_csv(data_dir / "reviews.csv", rows)


def analyse(data_dir: Path, slice_index: int | None, **data: Any) -> dict[str, Any]:
    data = {"dataset": "reviews.csv", "chunk_size": 10, **data}
    return analyze(make_task("distributed_analysis", data, data_dir, slice_index))


@pytest.mark.parametrize(
    ("slice_index", "rows", "bounds"),
    [(0, 10, [0, 10]), (1, 10, [10, 20]), (2, 5, [20, 25]), (None, 25, [0, 25])],
)
def test_each_slice_takes_its_own_rows(data_dir, reviews, slice_index, rows, bounds):
    result = analyse(data_dir, slice_index, analysis_type="summary")

    assert result["rows"] == rows
    assert result["slice"] == bounds
    assert result["columns"]["id"]["count"] == rows


def test_middle_slice_summary_sees_only_its_rows(data_dir, reviews):
    result = analyse(data_dir, 1, analysis_type="summary")

    assert result["columns"]["id"] == {
        "count": 10,
        "non_empty": 10,
        "distinct": 10,
        "min": 10,
        "max": 19,
        "mean": 14.5,
    }


def test_slice_past_the_end_is_empty_not_a_failure(data_dir, reviews):
    result = analyse(data_dir, 3, analysis_type="sentiment")

    assert result["rows"] == 0
    assert result["slice"] == [30, 30]
    assert (result["positive"], result["negative"], result["neutral"]) == (0, 0, 0)
    assert result["mean_compound"] == 0.0


def test_sentiment_counts_clear_sentences(data_dir):
    records = [{"comment": text} for text in POSITIVE + NEGATIVE + NEUTRAL]

    result = analyze(
        make_task(
            "distributed_analysis", {"records": records, "analysis_type": "sentiment"}, data_dir
        )
    )

    assert result["text_field"] == "comment"
    assert (result["positive"], result["negative"], result["neutral"]) == (2, 2, 1)
    assert result["rows"] == 5
    assert -1 < result["mean_compound"] < 1


def test_sentiment_uses_vader_thresholds_on_mild_text(data_dir):
    # Compound scores of about 0.20, -0.44 and 0.0: mild, but beyond or inside the 0.05 cut-offs.
    texts = ["The food was fine.", "Slightly disappointing.", "It works."]
    data = {"records": [{"message": text} for text in texts], "analysis_type": "sentiment"}

    result = analyze(make_task("distributed_analysis", data, data_dir))

    assert (result["positive"], result["negative"], result["neutral"]) == (1, 1, 1)
    assert result["mean_compound"] == pytest.approx((0.2023 - 0.4417) / 3, abs=1e-4)


def test_sentiment_mean_of_only_positive_text_is_positive(data_dir):
    records = [{"body": text, "text": "unused"} for text in POSITIVE]
    data = {"records": records, "analysis_type": "sentiment", "text_field": "body"}

    result = analyze(make_task("distributed_analysis", data, data_dir, slice_index=0))

    assert result["positive"] == 2
    assert result["mean_compound"] > 0.5


def test_unknown_analysis_type_lists_the_allowed_ones(data_dir, reviews):
    with pytest.raises(TaskFailed, match="allowed: sentiment, summary"):
        analyse(data_dir, 0, analysis_type="topics")


def test_dataset_without_a_text_column_fails(data_dir):
    data = {"records": [{"id": 1}], "analysis_type": "sentiment"}

    with pytest.raises(TaskFailed, match="no text column"):
        analyze(make_task("distributed_analysis", data, data_dir))


def test_named_text_field_must_exist(data_dir, reviews):
    with pytest.raises(TaskFailed, match="'body' is not a column"):
        analyse(data_dir, 0, analysis_type="sentiment", text_field="body")


@pytest.mark.parametrize("chunk_size", [0, -5, "10", 2.5, True])
def test_bad_chunk_size_fails(data_dir, reviews, chunk_size):
    with pytest.raises(TaskFailed, match="chunk_size"):
        analyse(data_dir, 0, analysis_type="summary", chunk_size=chunk_size)


# --- reporting ---------------------------------------------------------------------------


SALES = [
    {"region": "north", "amount": "10"},
    {"region": "south", "amount": "5"},
    {"region": "north", "amount": "20"},
    {"region": "north", "amount": ""},
    {"region": "east", "amount": "7.5"},
]


def test_report_groups_and_totals_the_metric(data_dir):
    write_csv(data_dir / "sales.csv", SALES)
    data = {"input_file": "sales.csv", "group_by": "region", "metric": "amount"}

    result = report(make_task("reporting", data, data_dir))

    assert result["groups"] == [
        {"group": "north", "count": 3, "sum": 30, "mean": 15.0},
        {"group": "east", "count": 1, "sum": 7.5, "mean": 7.5},
        {"group": "south", "count": 1, "sum": 5, "mean": 5.0},
    ]
    assert result["generated_rows"] == 3
    assert result["rows_in"] == 5


def test_report_without_grouping_has_one_row(data_dir):
    result = report(make_task("reporting", {"records": SALES, "metric": "amount"}, data_dir))

    assert result["groups"] == [{"group": "all", "count": 5, "sum": 42.5, "mean": 10.625}]
    assert result["generated_rows"] == 1


def test_report_on_a_missing_column_fails(data_dir):
    with pytest.raises(TaskFailed, match="group_by column 'country' not found"):
        report(make_task("reporting", {"records": SALES, "group_by": "country"}, data_dir))


def test_report_on_a_non_numeric_metric_fails(data_dir):
    with pytest.raises(TaskFailed, match="metric 'region' is not numeric in row 1"):
        report(make_task("reporting", {"records": SALES, "metric": "region"}, data_dir))


# --- echo --------------------------------------------------------------------------------


def test_echo_returns_the_data(data_dir):
    data = {"message": "hi", "n": [1, 2]}

    assert echo(make_task("echo", data, data_dir)) == {"echo": {"message": "hi", "n": [1, 2]}}
