# Orchestrator Service image: the API by default; the same image runs the Celery worker, beat,
# Flower and the one-shot steps with another command (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 orchestrator
WORKDIR /srv/orchestrator

# The lock first, so code changes do not reinstall it. Every package, dependencies included, is
# pinned with its hashes: the image gets exactly what `make test` ran against.
COPY requirements.lock .
RUN pip install --require-hashes --no-deps -r requirements.lock

# The code and data/, the spec's sample files (DATA_DIR).
COPY . .
# metrics: PROMETHEUS_MULTIPROC_DIR; a volume mounted there starts with this owner.
RUN mkdir -p metrics && chown orchestrator:orchestrator metrics

USER orchestrator
EXPOSE 5003

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % (os.environ.get('PORT') or '5003'), timeout=4)"]

CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
