"""Extension objects, created unbound and attached to the app in create_app().

The HTTP API object (flask-smorest) is made per app in create_app(), not here: the services
import this module and know nothing of HTTP.
"""

from flask import Flask, current_app
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Engine, create_engine

db = SQLAlchemy()
migrate = Migrate()

AUTOCOMMIT_ENGINE = "autocommit_engine"


def init_autocommit_engine(app: Flask) -> None:
    """A second engine, with its own pool, whose connections stay in autocommit: for the single
    statements that need no transaction (app/services/plain_reads.py). Switching a pooled
    connection of `db.engine` to autocommit and back cost a round trip per checkout."""
    app.extensions[AUTOCOMMIT_ENGINE] = create_engine(
        app.config["SQLALCHEMY_DATABASE_URI"],
        isolation_level="AUTOCOMMIT",
        **app.config["SQLALCHEMY_ENGINE_OPTIONS"],
    )


def autocommit_engine() -> Engine:
    """The current app's autocommit engine."""
    return current_app.extensions[AUTOCOMMIT_ENGINE]
