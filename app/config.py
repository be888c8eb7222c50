"""Settings read from the environment, in one place.

Every variable the service reads is named here. A bad value stops the process at start with a
message naming the variable, rather than failing later in a request.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

from limits import parse_many

# The six downstream AI services of the spec: variable name -> service name.
SERVICE_URL_VARIABLES: dict[str, str] = {
    "IMAGE_SERVICE_URL": "image",
    "VIDEO_SERVICE_URL": "video",
    "CRYPTO_SERVICE_URL": "crypto",
    "FRAUD_SERVICE_URL": "fraud",
    "COMPRESSION_SERVICE_URL": "compression",
    "MARKETING_SERVICE_URL": "marketing",
}


# Every variable read below; deployment files are checked against this list.
KNOWN_VARIABLES: tuple[str, ...] = (
    "DATABASE_URL",
    "POSTGRES_HOST",
    "POSTGRES_PORT",
    "POSTGRES_DB",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "REDIS_URL",
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_DB",
    "PORT",
    "MAX_BOTS",
    "DATA_DIR",
    "MAX_BODY_BYTES",
    "TASK_LEASE_SECONDS",
    "MAX_TASK_ATTEMPTS",
    "DOWNSTREAM_TIMEOUT",
    "IO_CALL_THREADS",
    "STATEMENT_TIMEOUT_MS",
    "TASK_TYPE_PLUGINS",
    "BREAKER_FAILURES",
    "BREAKER_COOLDOWN_S",
    "LOG_FORMAT",
    "ADMIN_API_KEY",
    "ANONYMOUS_ROLE",
    "RATE_LIMIT",
    "RATE_LIMIT_HEAVY",
    "IDEMPOTENCY_TTL",
    "TENANT_MAX_BOTS",
    "URL_ALLOWLIST",
    "MAX_JSON_DEPTH",
    "PROXY_HOPS",
    "METRICS_PUBLIC",
    "METRICS_TOKEN",
    "PROMETHEUS_MULTIPROC_DIR",
    "WORKER_METRICS_PORT",
    "CALLBACK_SECRET",
    "TASK_RETENTION_DAYS",
    "AUDIT_RETENTION_DAYS",
    *SERVICE_URL_VARIABLES,
)


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def _int(env: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _float(env: dict[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _choice(env: dict[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = (env.get(name) or default).strip().lower()
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _urls(env: dict[str, str], name: str) -> list[str]:
    raw = env.get(name, "")
    urls = [part.strip().rstrip("/") for part in raw.split(",") if part.strip()]
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{name} must hold http(s) URLs separated by commas, got {url!r}")
    return urls


def _rate(env: dict[str, str], name: str, default: str) -> str:
    # Read by the same parser flask-limiter uses, so every string it takes is taken here and a
    # string it would reject stops the start instead of silently removing the limit.
    raw = env.get(name, default).strip()
    if not raw:
        return raw
    try:
        items = parse_many(raw)
    except ValueError:
        items = []
    if not items or any(item.amount < 1 for item in items):
        raise ConfigError(
            f"{name} must be one or more limits such as '1000/second' or"
            f" '10/second;500/minute' (each 'N per|/ [M] second|minute|hour|day|month|year',"
            f" N at least 1, separated by ';' or ','), got {raw!r}"
        )
    return raw


_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}


def _duration(env: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    """Seconds, from a whole number of seconds or one with a unit: `90s`, `30m`, `24h`, `7d`."""
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    match = re.fullmatch(r"(\d+)\s*([smhd]?)", raw)
    if match is None:
        raise ConfigError(
            f"{name} must be a duration such as 86400, 90s, 30m, 24h or 7d, got {raw!r}"
        )
    seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not low <= seconds <= high:
        raise ConfigError(f"{name} must be between {low} and {high} seconds, got {seconds}")
    return seconds


def _allowlist(env: dict[str, str]) -> tuple[str, ...]:
    raw = env.get("URL_ALLOWLIST")
    if raw is not None:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    # By default runtime URLs may point where the environment's service URLs point.
    hosts = {
        urlsplit(url).hostname for variable in SERVICE_URL_VARIABLES for url in _urls(env, variable)
    }
    return tuple(sorted(host for host in hosts if host))


def _directory(env: dict[str, str], name: str) -> Path | None:
    raw = env.get(name)
    if not raw:
        return None
    path = Path(raw)
    if not path.is_dir() or not os.access(path, os.W_OK):
        raise ConfigError(f"{name} must name an existing writable directory, got {raw!r}")
    return path


def _secret(env: dict[str, str], name: str) -> str | None:
    raw = env.get(name) or None
    if raw is not None and len(raw) < 16:
        raise ConfigError(f"{name} must be at least 16 characters long")
    return raw


def _database_url(env: dict[str, str]) -> str:
    if env.get("DATABASE_URL"):
        url = env["DATABASE_URL"]
        if not url.startswith(("postgresql://", "postgresql+psycopg2://", "postgres://")):
            raise ConfigError(
                f"DATABASE_URL must be a postgresql:// URL, got {url.split('@')[-1]!r}"
            )
        return _psycopg2(url)
    host = env.get("POSTGRES_HOST", "localhost")
    port = _int(env, "POSTGRES_PORT", 5432, 1, 65535)
    user = quote(env.get("POSTGRES_USER", "postgres"), safe="")
    password = env.get("POSTGRES_PASSWORD", "")
    database = env.get("POSTGRES_DB", "orchestrator")
    auth = f"{user}:{quote(password, safe='')}" if password else user
    return _psycopg2(f"postgresql://{auth}@{host}:{port}/{database}")


def _psycopg2(url: str) -> str:
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; this service ships psycopg2.
    scheme, rest = url.split("://", 1)
    return f"postgresql+psycopg2://{rest}" if scheme in ("postgres", "postgresql") else url


def _redis_url(env: dict[str, str]) -> str:
    if env.get("REDIS_URL"):
        url = env["REDIS_URL"]
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"REDIS_URL must be a redis:// URL, got {url!r}")
        return url
    host = env.get("REDIS_HOST", "redis-service")
    port = _int(env, "REDIS_PORT", 6379, 1, 65535)
    database = _int(env, "REDIS_DB", 0, 0, 1023)
    return f"redis://{host}:{port}/{database}"


@dataclass(frozen=True)
class Settings:
    """Everything configurable, parsed and checked once."""

    database_url: str
    redis_url: str
    port: int = 5003
    max_bots: int = 50_000
    data_dir: Path = Path("data")
    max_body_bytes: int = 2 * 1024 * 1024
    # Seconds a claimed task may run before the reconciler may hand it to another worker.
    task_lease_seconds: int = 300
    max_task_attempts: int = 3
    downstream_timeout: float = 10.0
    # Calls one I/O pool process may hold in flight at once (its call threads).
    io_call_threads: int = 256
    statement_timeout_ms: int = 30_000
    # Modules that add task types (see app/services/task_types.py:init_app).
    task_type_plugins: tuple[str, ...] = ()
    # Consecutive failures that open a downstream URL's circuit breaker (5, not fewer: one call
    # makes up to 3 attempts per URL, and one unlucky task must not shut the URL for everyone),
    # and how long it stays open before one trial call may test it again.
    breaker_failures: int = 5
    breaker_cooldown_s: float = 10.0
    service_urls: dict[str, list[str]] = field(default_factory=dict)
    # `json` (one object a line, for log collectors) or `text` (for reading in a terminal).
    log_format: str = "json"
    # A key that is always an admin key (ADMIN_API_KEY); the role callers without a key get
    # (ANONYMOUS_ROLE, unset: none, every route but /health needs a key).
    admin_api_key: str | None = None
    anonymous_role: str | None = None
    # flask-limiter rate strings per API key ("10/second;500/minute" holds both); "" turns a
    # budget off. RATE_LIMIT is one budget for the whole API, RATE_LIMIT_HEAVY one more for the
    # calls that create thousands of rows.
    rate_limit: str = "1000 per second"
    rate_limit_heavy: str = "60 per minute"
    # How long a caller's retry with the same Idempotency-Key replays the first answer; older
    # answers are purged by beat. At least a minute, so no request outlives its own key.
    idempotency_ttl_s: int = 86_400
    tenant_max_bots: int | None = None
    # Hosts, .domains and CIDR networks that URLs registered at runtime may point to.
    url_allowlist: tuple[str, ...] = ()
    max_json_depth: int = 32
    # Proxies in front of the app whose X-Forwarded-For/-Proto to trust: 0 behind none (the
    # headers are ignored, so a client cannot forge its address), 1 behind nginx.
    proxy_hops: int = 0
    # GET /metrics: like other views of the whole service it answers an API key (viewer or
    # higher, no tenant); a scraper without a key is let in when METRICS_PUBLIC=1, or when it
    # sends METRICS_TOKEN as a bearer token. The directory where processes share counters (prometheus_client's
    # multiprocess mode), and the port a Celery worker serves them on (see app/metrics.py).
    metrics_public: bool = False
    metrics_token: str | None = None
    metrics_dir: Path | None = None
    worker_metrics_port: int | None = None
    # Signs callback deliveries (X-Orchestrator-Signature); without it no callback_url is taken.
    callback_secret: str | None = None
    # Finished tasks (with their workflows) and audit entries older than this many days are
    # deleted by beat's retention job; 0 keeps them forever.
    task_retention_days: int = 7
    audit_retention_days: int = 90

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Read and check every variable; raise ConfigError naming the first bad one."""
        env = dict(os.environ if env is None else env)
        return cls(
            database_url=_database_url(env),
            redis_url=_redis_url(env),
            port=_int(env, "PORT", 5003, 1, 65535),
            max_bots=_int(env, "MAX_BOTS", 50_000, 1, 10_000_000),
            data_dir=Path(env.get("DATA_DIR") or "data").resolve(),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", 2 * 1024 * 1024, 1024, 1024**3),
            task_lease_seconds=_int(env, "TASK_LEASE_SECONDS", 300, 5, 86_400),
            max_task_attempts=_int(env, "MAX_TASK_ATTEMPTS", 3, 1, 100),
            downstream_timeout=_float(env, "DOWNSTREAM_TIMEOUT", 10.0, 0.1, 600.0),
            io_call_threads=_int(env, "IO_CALL_THREADS", 256, 1, 4096),
            statement_timeout_ms=_int(env, "STATEMENT_TIMEOUT_MS", 30_000, 100, 3_600_000),
            task_type_plugins=tuple(
                name.strip() for name in env.get("TASK_TYPE_PLUGINS", "").split(",") if name.strip()
            ),
            breaker_failures=_int(env, "BREAKER_FAILURES", 5, 1, 1000),
            breaker_cooldown_s=_float(env, "BREAKER_COOLDOWN_S", 10.0, 0.1, 3600.0),
            service_urls={
                service: _urls(env, variable) for variable, service in SERVICE_URL_VARIABLES.items()
            },
            log_format=_choice(env, "LOG_FORMAT", "json", ("json", "text")),
            admin_api_key=env.get("ADMIN_API_KEY") or None,
            anonymous_role=_choice(env, "ANONYMOUS_ROLE", "", ("", "viewer", "operator", "admin"))
            or None,
            rate_limit=_rate(env, "RATE_LIMIT", "1000 per second"),
            rate_limit_heavy=_rate(env, "RATE_LIMIT_HEAVY", "60 per minute"),
            idempotency_ttl_s=_duration(env, "IDEMPOTENCY_TTL", 86_400, 60, 30 * 86_400),
            tenant_max_bots=_int(env, "TENANT_MAX_BOTS", 0, 0, 10_000_000) or None,
            url_allowlist=_allowlist(env),
            max_json_depth=_int(env, "MAX_JSON_DEPTH", 32, 2, 1000),
            proxy_hops=_int(env, "PROXY_HOPS", 0, 0, 10),
            metrics_public=_choice(env, "METRICS_PUBLIC", "0", ("0", "1")) == "1",
            metrics_token=env.get("METRICS_TOKEN") or None,
            metrics_dir=_directory(env, "PROMETHEUS_MULTIPROC_DIR"),
            worker_metrics_port=_int(env, "WORKER_METRICS_PORT", 0, 0, 65535) or None,
            callback_secret=_secret(env, "CALLBACK_SECRET"),
            task_retention_days=_int(env, "TASK_RETENTION_DAYS", 7, 0, 36_500),
            audit_retention_days=_int(env, "AUDIT_RETENTION_DAYS", 90, 0, 36_500),
        )
