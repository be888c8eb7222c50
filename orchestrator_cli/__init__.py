"""`orchestrator`: a command-line client for the Orchestrator Service's HTTP API.

It talks HTTP only and imports nothing from `app`, so it can be installed apart from the service.
"""

__version__ = "0.1.0"
