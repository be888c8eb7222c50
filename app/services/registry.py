"""Service discovery: where each downstream AI service lives, whether its URLs answer, and calls.

The `services` table is the registry. Its rows are seeded from the `*_SERVICE_URL` variables
and the defaults of `service_defaults.DOWNSTREAM` the first time a process reads the registry (one
`INSERT ... ON CONFLICT` statement, so every process may do it and the first one wins): seeding
needs the migrated tables, which exist by the first request or task but not yet when
create_app() runs before `flask db upgrade`. A row that `PUT /services/{name}` changed is never
overwritten from the environment again; a row still following its variable takes the variable's
new URLs when a process starts with different ones.

Callers keep the registry's rows for VIEW_TTL_S (`cached_views`) and drop them at once when
the Redis version key changes, which `PUT /services` and each probe pass do after their commit:
thousands of calls a second cost no SELECT each, and a PUT still takes effect on the next call
in every worker without a restart. The API's own answers read the tables.

The one failover and retry loop lives here: `attempt` is one round over the service's URLs in
order, skipping URLs whose circuit breaker is open (`breaker.py`) and trying last the ones the
latest health probe found unhealthy; connection errors, timeouts, 429 and 5xx move on to the next
URL. `call` repeats rounds with backoff for callers outside the I/O pool; the I/O pool
(`calls.py`) runs `attempt` and reschedules instead. Calls in flight to one service are capped
across all workers by Redis slots (`inflight.py`), so a swarm cannot flood it; the cap is
`inflight.current_limit`: the fixed `max_concurrency`, or with `max_concurrency: "auto"` the limit
`adaptive_limit.py` learns from the latency and outcome of every HTTP attempt in `attempt`.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import redis
import requests
from flask import current_app
from sqlalchemy import select, text

from app import metrics
from app.clients.downstream import (
    DownstreamBadResponse,
    DownstreamError,
    DownstreamHTTPError,
    post,
)
from app.clients.ssrf import Allowlist, UnsafeURL, check_url, pinned
from app.config import SERVICE_URL_VARIABLES, Settings
from app.errors import Invalid, NotFound
from app.extensions import db
from app.models import (
    ENDPOINT_HEALTHY,
    ENDPOINT_UNHEALTHY,
    ENDPOINT_UNKNOWN,
    SOURCE_API,
    SOURCE_ENV,
    Service,
    ServiceEndpoint,
)
from app.services import adaptive_limit, breaker, inflight
from app.services.adaptive_limit import AdaptiveState
from app.services.breaker import BreakerState
from app.services.ids import utcnow
from app.services.service_defaults import DOWNSTREAM

log = logging.getLogger(__name__)

VARIABLE_OF: dict[str, str] = {name: variable for variable, name in SERVICE_URL_VARIABLES.items()}

DEFAULT_HEALTH_PATH = "/health"
DEFAULT_MAX_CONCURRENCY = 16
MAX_CONCURRENCY = 10_000
# Rounds over all URLs after the first, with exponential backoff; a task may set its own.
DEFAULT_RETRIES = 2
RETRY_BACKOFF_S = 0.2
MAX_URLS = 10
PROBE_TIMEOUT_S = 2.0
# A probe older than this (beat stopped?) no longer demotes a URL.
PROBE_FRESH_S = 120
# How long a call waits for a free slot of a saturated service before giving up (retryable).
SLOT_WAIT_S = 30.0
# Changed after every commit that changes what callers see (a PUT, a probe pass).
VIEWS_VERSION_KEY = "orchestrator:services:version"
# How long a worker keeps the registry's rows without looking at the version key's value.
VIEW_TTL_S = 5.0

# KEYS[1] in-flight set (token -> lease expiry); ARGV limit, token, lease seconds. 1 = acquired.
# Expired leases (a worker killed mid-call) are dropped first, so a crash never leaks a slot.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])) + 60)
return 1
"""

# Insert absent services; refresh the URLs of rows still following their variable.
_SEED = """
INSERT INTO services AS s (name, urls, path, health_path, timeout_s, task_types,
                           max_concurrency, source)
VALUES (:name, CAST(:urls AS text[]), :path, :health_path, :timeout_s,
        CAST(:task_types AS text[]), :max_concurrency, :source)
ON CONFLICT (name) DO UPDATE SET urls = EXCLUDED.urls, timeout_s = EXCLUDED.timeout_s,
                                 updated_at = now()
 WHERE s.source = :source
   AND (s.urls, s.timeout_s) IS DISTINCT FROM (EXCLUDED.urls, EXCLUDED.timeout_s)
"""

_RECORD_PROBE = """
INSERT INTO service_endpoints AS e (service, url, state, latency_ms, last_probe_at, last_error)
VALUES (:service, :url, :state, :latency_ms, :probed_at, :last_error)
ON CONFLICT (service, url) DO UPDATE
   SET state = EXCLUDED.state, latency_ms = EXCLUDED.latency_ms,
       last_probe_at = EXCLUDED.last_probe_at, last_error = EXCLUDED.last_error
"""

# Health rows of URLs a PUT removed.
_FORGET_REMOVED_URLS = """
DELETE FROM service_endpoints e USING services s
 WHERE e.service = s.name AND NOT e.url = ANY(s.urls)
"""

# Database URLs this process has seeded (one per app, normally one).
_seeded: set[str] = set()


class ServiceBusy(DownstreamError):
    """Every slot of the service stayed taken for SLOT_WAIT_S."""


@dataclass(frozen=True)
class Endpoint:
    """One URL of a service, with its last probe (and, in API answers, its breaker)."""

    url: str
    state: str = ENDPOINT_UNKNOWN
    latency_ms: float | None = None
    last_probe_at: datetime | None = None
    last_error: str | None = None
    # The probe is recent enough to steer calls.
    fresh: bool = False
    breaker: BreakerState | None = None


@dataclass(frozen=True)
class ServiceView:
    """A registry row as callers and the API see it."""

    name: str
    variable: str | None
    urls: list[str]
    path: str
    health_path: str
    timeout_s: float
    task_types: list[str]
    # The fixed limit; with concurrency_auto, the one PUT gave before "auto" (unused meanwhile).
    max_concurrency: int
    source: str
    updated_at: datetime
    concurrency_auto: bool = False
    max_concurrency_ceiling: int | None = None
    endpoints: list[Endpoint] = field(default_factory=list)
    # Calls holding a slot right now (API answers only).
    in_flight: int | None = None
    # The limit in force now: max_concurrency, or the learned one (API answers only).
    concurrency_limit: int | None = None
    adaptive: AdaptiveState | None = None


# ---- seeding and reading ---------------------------------------------------------------------


def default_services(settings: Settings) -> list[dict[str, Any]]:
    """The seed rows: service_defaults.DOWNSTREAM's services with the URLs of their variables."""
    rows: dict[str, dict[str, Any]] = {}
    for type_name, default in DOWNSTREAM.items():
        row = rows.setdefault(
            default.name,
            {
                "name": default.name,
                "urls": list(settings.service_urls.get(default.name, [])),
                "path": default.path,
                "health_path": DEFAULT_HEALTH_PATH,
                "timeout_s": settings.downstream_timeout,
                "task_types": [],
                "max_concurrency": DEFAULT_MAX_CONCURRENCY,
                "source": SOURCE_ENV,
            },
        )
        row["task_types"].append(type_name)
    return list(rows.values())


def seed_from_settings(settings: Settings | None = None) -> None:
    """Insert the services missing from the registry; refresh rows that still follow the env.

    Runs in its own connection and transaction, so it never commits a caller's unit of work.
    """
    settings = settings or current_app.config["SETTINGS"]
    with db.engine.begin() as connection:
        connection.execute(text(_SEED), default_services(settings))
    _seeded.add(settings.database_url)


def list_services() -> list[ServiceView]:
    """Every service with its URLs' probe results, breakers and calls in flight."""
    return [_with_live_state(view) for view in _load_all()]


def get_service(name: str) -> ServiceView:
    """One service as list_services shows it, or 404."""
    views = _load_all()
    for view in views:
        if view.name == name:
            return _with_live_state(view)
    raise NotFound(f"No service {name!r}.", known_services=[v.name for v in views])


def service_for_task_type(type_name: str) -> ServiceView | None:
    """The service registered for a downstream task type (None if no service serves it)."""
    for view in cached_views():
        if type_name in view.task_types:
            return view
    return None


def services_by_task_type() -> dict[str, ServiceView]:
    """Each downstream task type served by a service, mapped to that service."""
    return {t: view for view in _load_all() for t in view.task_types}


def is_configured(type_name: str) -> tuple[bool, str | None]:
    """Whether a downstream type's service has a URL, and the variable that would give it one."""
    view = service_for_task_type(type_name)
    default = DOWNSTREAM.get(type_name)
    variable = VARIABLE_OF.get(view.name) if view else None
    variable = variable or (default.variable if default else None)
    return bool(view and view.urls), variable


@dataclass(frozen=True)
class _Cached:
    version: str
    loaded_at: float
    views: list[ServiceView]


# Per database URL: the rows, the version they were read under, and when.
_cache: dict[str, _Cached] = {}


def cached_views() -> list[ServiceView]:
    """The registry's rows for callers: at most VIEW_TTL_S old, and never older than a PUT.

    One Redis GET per use; a SELECT only when the version changed or the copy grew old.
    """
    settings = current_app.config["SETTINGS"]
    version = _views_version()
    cached = _cache.get(settings.database_url)
    now = time.monotonic()
    if (
        version is not None
        and cached is not None
        and cached.version == version
        and now - cached.loaded_at < VIEW_TTL_S
    ):
        return cached.views
    views = _load_all()
    # Read outside the request's unit of work: leave no transaction open in a worker thread.
    db.session.rollback()
    if version is not None:
        _cache[settings.database_url] = _Cached(version, now, views)
    return views


def views_changed() -> None:
    """Tell every process's cache that the registry changed (after the commit that did it)."""
    try:
        _redis().set(VIEWS_VERSION_KEY, uuid.uuid4().hex)
    except redis.RedisError as error:
        log.warning(
            "registry change not announced (callers see it within %ss): %s", VIEW_TTL_S, error
        )


def _views_version() -> str | None:
    # A missing key (new or flushed Redis) gets a new value: no copy can match it.
    try:
        client = _redis()
        value = client.get(VIEWS_VERSION_KEY)
        if value is None:
            client.set(VIEWS_VERSION_KEY, uuid.uuid4().hex, nx=True)
            value = client.get(VIEWS_VERSION_KEY)
    except redis.RedisError:
        return None
    return value.decode() if isinstance(value, bytes) else value


def _ensure_seeded() -> None:
    settings = current_app.config["SETTINGS"]
    if settings.database_url not in _seeded or _missing_defaults(
        settings, set(db.session.scalars(select(Service.name)))
    ):
        seed_from_settings(settings)


def _missing_defaults(settings: Settings, present: set[str]) -> bool:
    # True once the tables were emptied (tests, a restored backup): seeding runs again.
    return bool({row["name"] for row in default_services(settings)} - present)


def _load_all() -> list[ServiceView]:
    settings = current_app.config["SETTINGS"]
    if settings.database_url not in _seeded:
        seed_from_settings(settings)
    # populate_existing: a long-lived session must not answer from rows it read before a PUT.
    query = select(Service).order_by(Service.name).execution_options(populate_existing=True)
    services = db.session.scalars(query).all()
    if _missing_defaults(settings, {s.name for s in services}):
        seed_from_settings(settings)
        services = db.session.scalars(query).all()
    fresh_since = time.time() - PROBE_FRESH_S
    endpoints: dict[tuple[str, str], Endpoint] = {}
    for row in db.session.scalars(
        select(ServiceEndpoint).execution_options(populate_existing=True)
    ):
        endpoints[(row.service, row.url)] = Endpoint(
            url=row.url,
            state=row.state,
            latency_ms=row.latency_ms,
            last_probe_at=row.last_probe_at,
            last_error=row.last_error,
            fresh=row.last_probe_at is not None and row.last_probe_at.timestamp() > fresh_since,
        )
    return [
        ServiceView(
            name=s.name,
            variable=VARIABLE_OF.get(s.name),
            urls=list(s.urls),
            path=s.path,
            health_path=s.health_path,
            timeout_s=s.timeout_s,
            task_types=list(s.task_types),
            max_concurrency=s.max_concurrency,
            source=s.source,
            updated_at=s.updated_at,
            concurrency_auto=s.max_concurrency_auto,
            max_concurrency_ceiling=s.max_concurrency_ceiling,
            endpoints=[endpoints.get((s.name, url), Endpoint(url)) for url in s.urls],
        )
        for s in services
    ]


def _with_live_state(view: ServiceView) -> ServiceView:
    states = breaker.states(view.urls)
    try:
        in_flight: int | None = int(
            _redis().zcount(inflight.slots_key(view.name), time.time(), "+inf")
        )
    except redis.RedisError:
        in_flight = None
    adaptive = adaptive_limit.state(view)
    return replace(
        view,
        endpoints=[replace(e, breaker=states.get(e.url)) for e in view.endpoints],
        in_flight=in_flight,
        concurrency_limit=(
            adaptive.limit if adaptive else None if view.concurrency_auto else view.max_concurrency
        ),
        adaptive=adaptive,
    )


# ---- changing ------------------------------------------------------------------------------


def update_service(
    name: str,
    *,
    urls: list[str] | None = None,
    path: str | None = None,
    health_path: str | None = None,
    timeout_s: float | None = None,
    task_types: list[str] | None = None,
    max_concurrency: int | str | None = None,
    max_concurrency_ceiling: int | None = None,
) -> ServiceView:
    """Change a service at runtime (422 on a bad value); the next call anywhere uses it. Commits.

    Giving a task type to this service takes it from the service that served it. From now on the
    row no longer follows its *_SERVICE_URL variable. `max_concurrency="auto"` makes the limit
    learned, up to `max_concurrency_ceiling`; a number makes it fixed again. An automatic limit
    starts over when it is switched on or the service's URLs change.
    """
    _ensure_seeded()
    # Every row, locked in name order: a PUT may move task types between services, and two
    # concurrent PUTs must not deadlock or work from stale rows.
    rows = db.session.scalars(
        select(Service)
        .order_by(Service.name)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    service = next((row for row in rows if row.name == name), None)
    if service is None:
        raise NotFound(f"No service {name!r}.", known_services=[row.name for row in rows])
    was_auto, old_urls = service.max_concurrency_auto, list(service.urls)
    if urls is not None:
        service.urls = _checked_urls(urls)
    if path is not None:
        service.path = _checked_path(path, "path")
    if health_path is not None:
        service.health_path = _checked_path(health_path, "health_path")
    if timeout_s is not None:
        if not 0.1 <= timeout_s <= 600:
            raise Invalid("timeout_s must be between 0.1 and 600 seconds.", field="timeout_s")
        service.timeout_s = float(timeout_s)
    _apply_concurrency(service, max_concurrency, max_concurrency_ceiling)
    if task_types is not None:
        service.task_types = _checked_task_types(task_types)
        for other in rows:
            if other is service:
                continue
            kept = [t for t in other.task_types if t not in service.task_types]
            if kept != list(other.task_types):
                other.task_types = kept
                other.updated_at = utcnow()
    service.source = SOURCE_API
    service.updated_at = utcnow()
    db.session.flush()
    db.session.execute(text(_FORGET_REMOVED_URLS))
    db.session.commit()
    if service.max_concurrency_auto and (not was_auto or list(service.urls) != old_urls):
        adaptive_limit.reset(name)
    views_changed()
    return get_service(name)


def _apply_concurrency(
    service: Service, max_concurrency: int | str | None, ceiling: int | None
) -> None:
    """A fixed limit, or "auto" with a ceiling (given now or kept from before); 422 otherwise."""
    if ceiling is not None and not 1 <= ceiling <= MAX_CONCURRENCY:
        raise Invalid(
            f"max_concurrency_ceiling must be between 1 and {MAX_CONCURRENCY}.",
            field="max_concurrency_ceiling",
        )
    if max_concurrency == adaptive_limit.AUTO:
        ceiling = ceiling or service.max_concurrency_ceiling
        if ceiling is None:
            raise Invalid(
                'max_concurrency "auto" needs max_concurrency_ceiling: the most calls in '
                "flight the service may ever be given.",
                field="max_concurrency_ceiling",
            )
        service.max_concurrency_auto, service.max_concurrency_ceiling = True, ceiling
    elif max_concurrency is not None:
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
            raise Invalid(
                f'max_concurrency must be a number or "{adaptive_limit.AUTO}".',
                field="max_concurrency",
            )
        if not 1 <= max_concurrency <= MAX_CONCURRENCY:
            raise Invalid(
                f"max_concurrency must be between 1 and {MAX_CONCURRENCY}.",
                field="max_concurrency",
            )
        if ceiling is not None:
            raise Invalid(
                'max_concurrency_ceiling goes with max_concurrency "auto" only.',
                field="max_concurrency_ceiling",
            )
        service.max_concurrency = max_concurrency
        service.max_concurrency_auto, service.max_concurrency_ceiling = False, None
    elif ceiling is not None:
        if not service.max_concurrency_auto:
            raise Invalid(
                'max_concurrency_ceiling goes with max_concurrency "auto" only; this service '
                "has a fixed limit.",
                field="max_concurrency_ceiling",
            )
        service.max_concurrency_ceiling = ceiling


def _checked_urls(urls: list[str]) -> list[str]:
    if not 1 <= len(urls) <= MAX_URLS:
        raise Invalid(f"urls must hold 1 to {MAX_URLS} URLs.", field="urls")
    checked = []
    for raw in urls:
        url = raw.strip().rstrip("/")
        parsed = requests.utils.urlparse(url)
        if (
            parsed.scheme not in ("http", "https")
            or not parsed.hostname
            or any(c.isspace() for c in url)
        ):
            raise Invalid(f"{raw!r} is not an http(s) URL.", field="urls")
        if url in checked:
            raise Invalid(f"{url!r} is listed twice.", field="urls")
        if url not in _trusted_urls():
            try:
                check_url(url, _allowlist())
            except UnsafeURL as error:
                raise Invalid(f"{url!r} may not be called: {error}.", field="urls") from None
        checked.append(url)
    return checked


def _trusted_urls() -> set[str]:
    """URLs from the environment: the operator's own, called without the allowlist check."""
    settings = current_app.config["SETTINGS"]
    return {url for urls in settings.service_urls.values() for url in urls}


def _allowlist() -> Allowlist:
    return Allowlist.parse(list(current_app.config["SETTINGS"].url_allowlist))


def _target(url: str) -> tuple[str, dict[str, str]]:
    """Where to connect for `url`: checked again at call time unless the environment set it."""
    if url in _trusted_urls():
        return url, {}
    try:
        addresses = check_url(url, _allowlist())
    except UnsafeURL as error:
        raise DownstreamError(f"{url} may not be called: {error}", retryable=False) from None
    return pinned(url, addresses)


def _checked_path(path: str, name: str) -> str:
    if not path.startswith("/") or len(path) > 200 or any(c.isspace() for c in path):
        raise Invalid(
            f"{name} must start with '/' and hold no spaces (200 characters).", field=name
        )
    return path


def _checked_task_types(task_types: list[str]) -> list[str]:
    unknown = sorted(set(task_types) - set(DOWNSTREAM))
    if unknown:
        raise Invalid(
            f"Not downstream task types: {', '.join(unknown)}.",
            field="task_types",
            known_types=sorted(DOWNSTREAM),
        )
    return list(dict.fromkeys(task_types))


# ---- calling -------------------------------------------------------------------------------


def callable_view(task_type: str) -> ServiceView:
    """The service that serves task_type, with at least one URL (else a final DownstreamError)."""
    view = service_for_task_type(task_type)
    if view is None:
        raise DownstreamError(f"no service serves task type {task_type!r}", retryable=False)
    if not view.urls:
        raise DownstreamError(
            f"the {view.name} service has no URL (set {view.variable} or PUT /services/{view.name})",
            retryable=False,
        )
    return view


def rounds_allowed(retries: int | None) -> int:
    """How many rounds over a service's URLs one task may use: the first and its retries."""
    return 1 + (DEFAULT_RETRIES if retries is None else max(retries, 0))


def backoff_before(round_number: int) -> float:
    """Seconds to wait before round `round_number` (2, 3, ...): exponential, with jitter that
    spreads the retries of many workers apart."""
    base = RETRY_BACKOFF_S * 2 ** max(round_number - 2, 0)
    return base + random.uniform(0, base)


def call(
    task_type: str,
    payload: dict[str, Any],
    *,
    timeout: float | None = None,
    retries: int | None = None,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """POST payload to the service of task_type, failing over across its URLs; the JSON reply.

    The blocking form, for a caller outside the I/O pool: it waits for a slot and sleeps out its
    backoff. The I/O pool (app/services/calls.py) runs the same rounds (`attempt`) but
    reschedules instead of waiting. Raises DownstreamError: `retryable` says whether trying later
    may succeed.
    """
    view = callable_view(task_type)
    timeout = timeout or view.timeout_s
    last_error: DownstreamError | None = None
    for round_number in range(1, rounds_allowed(retries) + 1):
        if round_number > 1:
            time.sleep(backoff_before(round_number))
        try:
            with _slot(view, timeout):
                return attempt(view, payload, timeout, idempotency_key)
        except ServiceBusy:
            raise
        except DownstreamError as error:
            if not error.retryable:
                raise
            last_error = error
    assert last_error is not None
    raise last_error


def attempt(
    view: ServiceView,
    payload: dict[str, Any],
    timeout: float,
    idempotency_key: str | None = None,
    reading: breaker.Reading | None = None,
) -> dict[str, Any]:
    """One round: each URL once, in order, until one answers; the caller holds the slot.

    URLs whose breaker is open are skipped, URLs the latest probe found down go last, and every
    URL passes the URL guard (app/clients/ssrf.py) before it is called. `reading`: the caller's
    recent reading of which URLs have a clean breaker (`breaker.read`); for the URLs it trusts
    the breaker's round trips would change nothing and are left out, unless the call fails.
    """
    # URLs the latest probe found down go last: probes can be wrong, calls are the real test.
    demoted = {e.url for e in view.endpoints if e.state == ENDPOINT_UNHEALTHY and e.fresh}
    ordered = [u for u in view.urls if u not in demoted] + [u for u in view.urls if u in demoted]
    # Long enough for the whole call (connect and read timeouts) to end before another trial.
    trial_ttl = 2 * timeout + 5
    last_error: DownstreamError | None = None
    for url in ordered:
        trusted = reading is not None and reading.trusts(url)
        if not trusted and not breaker.allow(url, trial_ttl):
            continue
        try:
            target, headers = _target(url)
            if idempotency_key:
                headers = {**headers, "Idempotency-Key": idempotency_key}
            with (
                metrics.downstream_call(view.name, url),
                adaptive_limit.measured(view, in_flight_key=inflight.slots_key(view.name)),
            ):
                result = post(target, view.path, payload, timeout=timeout, headers=headers)
        except DownstreamError as error:
            if error.retryable:
                breaker.record_failure(url)
                last_error = error
                continue
            if isinstance(error, (DownstreamHTTPError, DownstreamBadResponse)):
                breaker.record_success(url)  # it answered: the URL is up, the request is bad
            raise
        if not (reading is not None and reading.trusts(url)):  # it may have failed meanwhile
            breaker.record_success(url)
        return result
    if last_error is None:
        raise DownstreamError(
            f"circuit breaker open for every URL of the {view.name} service", retryable=True
        )
    raise last_error


@contextmanager
def _slot(view: ServiceView, timeout: float) -> Iterator[None]:
    """Hold one of the service's max_concurrency slots, shared by every worker, for one attempt."""
    key = inflight.slots_key(view.name)
    token = uuid.uuid4().hex
    # A slot outlives the longest attempt; an expired one belonged to a worker that died.
    lease = 2 * timeout + 10
    client = _redis()
    try:
        _wait_for_slot(client, key, token, lease, view)
        held = True
    except redis.RedisError as error:
        log.warning("concurrency limit of %s unavailable, calling anyway: %s", view.name, error)
        held = False
    try:
        yield
    finally:
        if held:
            try:
                client.zrem(key, token)
            except redis.RedisError:
                pass  # the lease expires on its own


def _wait_for_slot(
    client: redis.Redis, key: str, token: str, lease: float, view: ServiceView
) -> None:
    deadline = time.monotonic() + SLOT_WAIT_S
    while not client.eval(_ACQUIRE, 1, key, inflight.current_limit(view), token, lease):
        if time.monotonic() > deadline:
            raise ServiceBusy(
                f"the {view.name} service had no free slot (limit "
                f"{inflight.current_limit(view)}) for {SLOT_WAIT_S:.0f}s",
                retryable=True,
            )
        time.sleep(random.uniform(0.01, 0.05))


# ---- probing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Probe:
    service: str
    url: str
    state: str
    latency_ms: float | None
    last_error: str | None


def probe_all() -> dict[str, int]:
    """GET every URL's health path (in parallel, short timeout) and store what answered. Commits."""
    # Where to connect is decided here, in the app context; the probes run in threads.
    targets = [(view, url, _probe_target(url)) for view in _load_all() for url in view.urls]
    probed_at = utcnow()
    results: list[_Probe] = []
    if targets:
        with ThreadPoolExecutor(max_workers=min(16, len(targets))) as pool:
            results = list(pool.map(lambda target: _probe(*target), targets))
        db.session.execute(
            text(_RECORD_PROBE),
            [{**r.__dict__, "probed_at": probed_at} for r in results],
        )
    db.session.execute(text(_FORGET_REMOVED_URLS))
    db.session.commit()
    views_changed()
    healthy = sum(1 for r in results if r.state != ENDPOINT_UNHEALTHY)
    return {"probed": len(results), "healthy": healthy, "unhealthy": len(results) - healthy}


def _probe_target(url: str) -> tuple[str, dict[str, str]] | str:
    try:
        return _target(url)
    except DownstreamError as error:
        return str(error)


def _probe(view: ServiceView, url: str, connect: tuple[str, dict[str, str]] | str) -> _Probe:
    target = url.rstrip("/") + "/" + view.health_path.lstrip("/")
    if isinstance(connect, str):
        return _Probe(view.name, url, ENDPOINT_UNHEALTHY, None, connect)
    base, headers = connect
    started = time.monotonic()
    try:
        response = requests.get(
            base.rstrip("/") + "/" + view.health_path.lstrip("/"),
            headers=headers,
            timeout=PROBE_TIMEOUT_S,
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        return _Probe(view.name, url, ENDPOINT_UNHEALTHY, None, f"{type(exc).__name__}")
    latency_ms = round((time.monotonic() - started) * 1000, 1)
    if 200 <= response.status_code < 300:
        return _Probe(view.name, url, ENDPOINT_HEALTHY, latency_ms, None)
    error = f"{target} answered {response.status_code}"
    return _Probe(view.name, url, ENDPOINT_UNHEALTHY, latency_ms, error)


def _redis() -> redis.Redis:
    return current_app.extensions["redis"]
