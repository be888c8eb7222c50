"""Extension objects, created unbound and attached to the app in create_app().

The HTTP API object (flask-smorest) is made per app in create_app(), not here: the services
import this module and know nothing of HTTP.
"""

from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

db = SQLAlchemy()
migrate = Migrate()
