def test_health_reports_both_parts_connected(client):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "healthy"
    assert body["redis"] == "connected" and body["postgres"] == "connected"


def test_an_answer_survives_its_database_connection_dying_before_teardown(test_env):
    """PostgreSQL going away after the answer is made must not turn it into an error."""
    import os

    from flask import jsonify
    from sqlalchemy import text

    from app import create_app
    from app.config import Settings
    from app.extensions import db

    app = create_app(Settings.from_env({**os.environ, **test_env}))

    @app.route("/_test/connection-dies")
    def connection_dies():
        pid = db.session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with db.engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        return jsonify({"pid": pid})

    response = app.test_client().get("/_test/connection-dies")
    assert response.status_code == 200 and response.get_json()["pid"] > 0
