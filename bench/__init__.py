"""The benchmark: `python -m bench [--quick] [--runs N]` (or `make bench`).

It starts the real stack on loopback (gunicorn with 2 workers, one Celery worker with concurrency 2)
against the PostgreSQL and Redis that DATABASE_URL and REDIS_URL name, drives it over HTTP, and
writes docs/performance.md and bench/results/latest.json. See docs/performance.md for the method.
"""
