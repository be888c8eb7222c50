"""Hot statements prepared once per connection: same answers as text(), one PREPARE each."""

from __future__ import annotations

from sqlalchemy import text

from app.extensions import autocommit_engine, db
from app.services import prepared

# A repeated parameter, a `::` cast, a literal `%` and a parameter typed only by its CAST.
SQL = """
SELECT CAST(:word AS text) || '%' AS word, CAST(:n AS int) + '1'::int AS next,
       CAST(:n AS int) * 2 AS twice, CAST(:missing AS text) IS NULL AS missing
"""


def _prepared_here(connection) -> list[str]:
    return list(connection.execute(text("SELECT statement FROM pg_prepared_statements")).scalars())


def _prepared_by_name(connection) -> dict[str, str]:
    rows = connection.execute(text("SELECT name, statement FROM pg_prepared_statements"))
    return {name: statement for name, statement in rows}


def test_a_statement_is_prepared_once_per_connection_and_answers_as_text_does(app):
    params = {"word": "a:b", "n": 20, "missing": None}
    with autocommit_engine().connect() as connection:
        first = prepared.execute(connection, SQL, params).one()
        again = prepared.execute(connection, SQL, {**params, "n": 1}).one()
        plain = connection.execute(text(SQL), params).one()
        statements = _prepared_by_name(connection)

    assert first == plain == ("a:b%", 21, 40, True)
    assert again.next == 2 and again._fields == ("word", "next", "twice", "missing")
    # Prepared under its name (a second PREPARE of that name would have failed), as numbered.
    name, numbered, _ = prepared._numbered(SQL)
    assert numbered.strip() in statements[name]
    assert "CAST($1 AS text) || '%'" in statements[name] and ":word" not in statements[name]


def test_a_prepared_statement_outlives_a_rolled_back_transaction(app):
    connection = db.session.connection()
    assert prepared.execute(connection, SQL, {"word": "x", "n": 1, "missing": 1}).one().next == 2
    db.session.rollback()

    connection = db.session.connection()
    assert prepared.execute(connection, SQL, {"word": "y", "n": 2, "missing": None}).one() == (
        "y%",
        3,
        4,
        True,
    )
    db.session.rollback()


def test_a_statement_over_many_rows_is_planned_each_time_not_prepared(app):
    sql = "SELECT count(*) AS n FROM unnest(CAST(:ids AS bigint[])) AS ids"
    ids = "{" + ",".join(str(i) for i in range(prepared.FEW_ROWS + 1)) + "}"
    with autocommit_engine().connect() as connection:
        many = prepared.execute(connection, sql, {"ids": ids}, rows=prepared.FEW_ROWS + 1).one()
        assert not [s for s in _prepared_here(connection) if "unnest" in s]
        few = prepared.execute(connection, sql, {"ids": "{1,2}"}, rows=2).one()
        assert [s for s in _prepared_here(connection) if "unnest" in s]
    assert (many.n, few.n) == (prepared.FEW_ROWS + 1, 2)


def test_a_prepared_statement_is_planned_for_the_table_as_it_has_grown(app):
    # The shape of the worker's record: the tasks joined to the outcomes sent as JSON.
    sql = """
    SELECT g.v FROM grows g
      JOIN jsonb_to_recordset(CAST(:rows AS jsonb)) AS o(id bigint) ON g.id = o.id
    """
    name = prepared._numbered(sql)[0]
    with autocommit_engine().connect() as connection:
        connection.execute(text("CREATE TEMP TABLE grows (id bigint PRIMARY KEY, v int)"))
        try:
            connection.execute(text("INSERT INTO grows SELECT g, g FROM generate_series(1, 3) g"))
            connection.execute(text("ANALYZE grows"))
            # More runs than PostgreSQL makes before it may settle on one plan for the rest.
            for _ in range(8):
                assert prepared.execute(connection, sql, {"rows": '[{"id": 2}]'}).scalar_one() == 2
            connection.execute(
                text("INSERT INTO grows SELECT g, g FROM generate_series(4, 200000) g")
            )
            plan = "\n".join(
                connection.execute(text(f"EXPLAIN EXECUTE {name}('[{{\"id\": 5}}]')")).scalars()
            )
            assert "Seq Scan on grows" not in plan, plan
        finally:
            connection.execute(text(f"DEALLOCATE {name}"))
            connection.execute(text("DROP TABLE grows"))
