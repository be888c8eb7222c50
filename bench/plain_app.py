"""The plain Flask + Celery way of assigning one task, as the single-assignment baseline.

Not part of the service. What a Flask user would write first: Flask-SQLAlchemy, one INSERT of the
task, one UPDATE of a counter row, one commit and one `apply_async` per request; the worker marks
the task completed and counts it. No authentication, audit, rate limit or validation beyond JSON.

    gunicorn -w 2 bench.plain_app:app          the API (POST /bots/<bot_id>/tasks)
    celery -A bench.plain_app.celery worker -Q bench_plain
"""

from __future__ import annotations

from datetime import UTC, datetime

from celery import Celery
from flask import Flask, jsonify, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import BigInteger, DateTime, Identity, String, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

import celeryconfig
from app.config import Settings

QUEUE = "bench_plain"

app = Flask(__name__)
# The service's own reading of DATABASE_URL / REDIS_URL (driver name, defaults).
settings = Settings.from_env()
app.config["SQLALCHEMY_DATABASE_URI"] = settings.database_url
db = SQLAlchemy(app)

celery = Celery("plain", broker=settings.redis_url)
# The service's worker settings (acks late, prefetch 1), on its own queue.
celery.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=celeryconfig.task_acks_late,
    worker_prefetch_multiplier=celeryconfig.worker_prefetch_multiplier,
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
)


class PlainTask(db.Model):
    __tablename__ = "plain_tasks"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    bot_id: Mapped[str] = mapped_column(String(40))
    type: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(16))
    assigned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PlainCounter(db.Model):
    __tablename__ = "plain_counters"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


def create_tables() -> None:
    """The two tables and the counter rows (the bench calls it once, before starting this)."""
    with app.app_context():
        db.create_all()
        db.session.execute(
            text(
                "INSERT INTO plain_counters (name, value) VALUES ('tasks_assigned', 0),"
                " ('tasks_completed', 0) ON CONFLICT DO NOTHING"
            )
        )
        db.session.commit()


@app.post("/bots/<bot_id>/tasks")
def assign(bot_id: str):
    body = request.get_json()
    task = PlainTask(
        bot_id=bot_id,
        type=body["type"],
        data=body.get("data", {}),
        status="assigned",
        assigned_at=datetime.now(UTC),
    )
    db.session.add(task)
    db.session.execute(
        text("UPDATE plain_counters SET value = value + 1 WHERE name = 'tasks_assigned'")
    )
    db.session.commit()
    run_task.apply_async(args=[task.id])
    return jsonify(
        task_id=f"task-{task.id}",
        bot_id=bot_id,
        task_type=task.type,
        status="assigned",
        assigned_at=task.assigned_at.isoformat(),
    ), 202


@celery.task(name="bench.plain.run_task")
def run_task(task_id: int) -> None:
    with app.app_context():
        db.session.execute(
            text("UPDATE plain_tasks SET status = 'completed' WHERE id = :id"), {"id": task_id}
        )
        db.session.execute(
            text("UPDATE plain_counters SET value = value + 1 WHERE name = 'tasks_completed'")
        )
        db.session.commit()
