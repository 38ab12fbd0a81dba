"""TaskHub settings, every knob read from the environment.

With no variables set everything runs on one machine with nothing else
installed: SQLite under ``var/`` and kombu's filesystem transport as broker.
``DATABASE_URL=postgres://…`` and ``CELERY_BROKER_URL=redis://…`` give the
production stack.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("TASKHUB_VAR_DIR", BASE_DIR / "var"))


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_secret(name: str, default: str) -> str:
    """Return variable ``name``, or the content of the file ``name_FILE`` names, or ``default``.

    The file form keeps secrets out of the environment (container secrets,
    a file only the service's user may read).
    """
    value = os.environ.get(name, "")
    path = os.environ.get(f"{name}_FILE", "")
    if value and path:
        raise ImproperlyConfigured(f"Set {name} or {name}_FILE, not both.")
    if not path:
        return value or default
    try:
        content = Path(path).read_text().rstrip("\r\n")
    except OSError as exc:
        raise ImproperlyConfigured(f"{name}_FILE={path!r}: cannot read it ({exc.strerror}).") from None
    if not content:
        raise ImproperlyConfigured(f"{name}_FILE={path!r}: the file is empty.")
    return content


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r}: expected one of 1/0, true/false, yes/no, on/off")


def env_number(name: str, default: float, *, minimum: float = 0, integer: bool = False) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise ImproperlyConfigured(f"{name}={raw!r}: expected {kind}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={raw!r}: must be at least {minimum}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


# Core Django
DEBUG = env_bool("DJANGO_DEBUG", False)
# The secret key: DJANGO_SECRET_KEY(_FILE), or the file `manage.py taskhub_setup`
# makes under var/. Settings never write it (a read-only container must
# start); with none, the system check config.E001 says how to make one.
GENERATED_SECRET_KEY_FILE = VAR_DIR / "secret_key"
SECRET_KEY = env_secret("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    try:
        SECRET_KEY = GENERATED_SECRET_KEY_FILE.read_text().strip()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ImproperlyConfigured(
            f"{GENERATED_SECRET_KEY_FILE}: cannot read the secret key ({exc.strerror})."
        ) from None
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "django_celery_results",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files, served from our static files (no CDN)
    "taskhub",
    "executions",
    "notifications",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database: SQLite under var/ unless DATABASE_URL says otherwise
DATABASE_URL = env_secret("DATABASE_URL", f"sqlite:///{VAR_DIR / 'taskhub.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=600, conn_health_checks=True)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        # WAL lets web, worker and beat read while one of them writes; the
        # busy timeout (seconds) and IMMEDIATE transactions make writers queue
        # instead of failing with "database is locked".
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    # The test database must be a file: worker processes share it.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-taskhub.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TASKHUB_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True
FORMAT_MODULE_PATH = ["config.formats"]

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}


# Security: HTTPS and cookies. DJANGO_SECURE=1 turns each of these on (serve
# only over HTTPS then); each can also be set on its own.
def env_proxy_ssl_header(name: str) -> tuple[str, str] | None:
    """Parse ``Header=value`` (or ``Header: value``), e.g. X-Forwarded-Proto=https, into Django's form."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    separator = "=" if "=" in raw else ":"
    header, _, value = (part.strip() for part in raw.partition(separator))
    if not value or not re.fullmatch(r"[A-Za-z0-9_-]+", header):
        raise ImproperlyConfigured(f"{name}={raw!r}: expected HEADER=VALUE, e.g. X-Forwarded-Proto=https")
    meta_name = header.upper().replace("-", "_")
    return (meta_name if meta_name.startswith("HTTP_") else f"HTTP_{meta_name}", value)


SECURE = env_bool("DJANGO_SECURE", False)
SECURE_HSTS_SECONDS = env_number("DJANGO_HSTS_SECONDS", 31536000 if SECURE else 0, integer=True)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", SECURE)
# The preload flag lets anyone submit the domain to the browsers' HSTS preload
# list; set DJANGO_HSTS_PRELOAD=0 if any subdomain is not on HTTPS.
SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", SECURE)
SECURE_SSL_REDIRECT = env_bool("DJANGO_SSL_REDIRECT", SECURE)
# A load balancer's health probe often comes over plain HTTP from inside the network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SESSION_COOKIE_SECURE = env_bool("DJANGO_SESSION_COOKIE_SECURE", SECURE)
CSRF_COOKIE_SECURE = env_bool("DJANGO_CSRF_COOKIE_SECURE", SECURE)
# Behind a proxy that ends TLS: the header it sets on HTTPS requests. Never set
# it without such a proxy (clients could send the header themselves).
SECURE_PROXY_SSL_HEADER = env_proxy_ssl_header("DJANGO_PROXY_SSL_HEADER")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])
# Error reports (the DEBUG page, error e-mails) hide connection URLs as well as keys and passwords.
DEFAULT_EXCEPTION_REPORTER_FILTER = "config.reporting.SafeSettingsFilter"
# Failed admin logins per user name within the window (seconds); then logins wait.
TASKHUB_LOGIN_FAILURE_LIMIT = env_number("TASKHUB_LOGIN_FAILURE_LIMIT", 10, minimum=1, integer=True)
TASKHUB_LOGIN_FAILURE_WINDOW = env_number("TASKHUB_LOGIN_FAILURE_WINDOW", 60, minimum=1, integer=True)

# Cache: the counters of the API and login throttles. Each process counts on
# its own unless TASKHUB_CACHE_URL names a Redis database they all share.
TASKHUB_CACHE_URL = env_str("TASKHUB_CACHE_URL", "")
if TASKHUB_CACHE_URL:
    if urlsplit(TASKHUB_CACHE_URL).scheme not in {"redis", "rediss", "unix"}:
        raise ImproperlyConfigured(f"TASKHUB_CACHE_URL={TASKHUB_CACHE_URL!r}: expected a redis:// URL")
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": TASKHUB_CACHE_URL,
            "KEY_PREFIX": "taskhub",
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# Logging: every process (web, worker, beat) writes warnings and errors, with
# their tracebacks, to stderr. The root logger's level is left to the process
# (WARNING by default; a Celery worker sets its --loglevel), so the handler
# itself has none.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {"require_debug_false": {"()": "django.utils.log.RequireDebugFalse"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
        "mail_admins": {
            "level": "ERROR",
            "filters": ["require_debug_false"],
            "class": "django.utils.log.AdminEmailHandler",
        },
    },
    "root": {"handlers": ["console"]},
    "loggers": {
        # Replaces Django's default handlers, whose console one writes only under DEBUG.
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        # Requests that failed: 4xx as warnings, 5xx as errors with the traceback.
        "django.request": {"handlers": ["console", "mail_admins"], "level": "WARNING", "propagate": False},
        # runserver's access lines.
        "django.server": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # No level: a worker or beat sets it from --loglevel through the root logger.
        "celery": {"handlers": ["console"], "propagate": False},
        "taskhub": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "executions": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}


# REST framework
def env_rate(name: str, default: str) -> str | None:
    """Read a throttle rate such as 30/min (per s, min, hour or day); "off" turns the throttle off."""
    raw = os.environ.get(name, "").strip() or default
    if raw.lower() == "off":
        return None
    if not re.fullmatch(r"[0-9]+/(s|sec|second|m|min|minute|h|hour|d|day)", raw):
        raise ImproperlyConfigured(f"{name}={raw!r}: expected a rate such as 30/min (per s, min, hour or day) or off")
    return raw


REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.DjangoModelPermissions"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    # Every error is JSON, and bad input (a body nested too deeply, too large) is 4xx.
    "EXCEPTION_HANDLER": "config.api_errors.api_exception_handler",
    "DEFAULT_PARSER_CLASSES": [
        "config.api_parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    # Requests per client (anonymous ones per address, the others per user).
    "DEFAULT_THROTTLE_CLASSES": ["config.throttles.AnonThrottle", "config.throttles.UserThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env_rate("TASKHUB_API_THROTTLE_ANON", "30/min"),
        "user": env_rate("TASKHUB_API_THROTTLE_USER", "1200/min"),
    },
}
SPECTACULAR_SETTINGS = {
    "TITLE": "TaskHub API",
    "VERSION": "1.0.0",
    # The schema lists every endpoint and field: for signed-in users only.
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    # /api/docs/ loads Swagger UI from drf-spectacular-sidecar's static files.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
}

# Celery: broker (embedded filesystem transport unless CELERY_BROKER_URL is set;
# `manage.py taskhub_setup` makes its folders)
BROKER_DIR = VAR_DIR / "broker"
CELERY_BROKER_URL = env_secret("CELERY_BROKER_URL", "filesystem://localhost//")
BROKER_SCHEME = urlsplit(CELERY_BROKER_URL).scheme.split("+")[0]
if BROKER_SCHEME == "filesystem":
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "control_folder": str(BROKER_DIR / "control"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "store_processed": False,
    }
elif BROKER_SCHEME in {"redis", "rediss"}:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # Ten real priority levels (kombu folds 0-9 into four by default);
        # lower is more urgent on Redis, so TaskHub sends 9 - priority.
        "priority_steps": list(range(10)),
        "sep": ":",
        "queue_order_strategy": "priority",
        # Seconds an unacked message may stay with a worker before Redis hands
        # it to another. Retries longer than TASKHUB_MAX_ETA never sit in the
        # broker (the reconciler sends them when due), and a redelivered
        # message for a running execution is a no-op thanks to the claim.
        "visibility_timeout": env_number("TASKHUB_VISIBILITY_TIMEOUT", 2 * 3600, minimum=60),
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {}
# TaskHub's extensions of Celery and kombu (celery_ext/), each kept because
# `make bench` shows it moves throughput (docs/performance.md): `transport`
# (kombu's Redis transport with one client per channel), `producer` (the
# declaration cache asked first), `settings` (Celery's settings kept at hand),
# `unanswered` (task events sent without waiting for Redis's reply) and
# `unanswered_acks` (acks and delivery records likewise). Name fewer to turn
# some off, e.g. behind a Redis proxy that refuses CLIENT REPLY.
TASKHUB_CELERY_EXT = frozenset(
    env_list("TASKHUB_CELERY_EXT", ["transport", "producer", "settings", "unanswered", "unanswered_acks"])
)
_unknown_ext = TASKHUB_CELERY_EXT - {"transport", "producer", "settings", "unanswered", "unanswered_acks", "none"}
if _unknown_ext:
    raise ImproperlyConfigured(f"TASKHUB_CELERY_EXT: unknown {', '.join(sorted(_unknown_ext))}")
if BROKER_SCHEME == "redis" and "transport" in TASKHUB_CELERY_EXT:
    CELERY_BROKER_TRANSPORT = "celery_ext.broker:Transport"
    if "unanswered" in TASKHUB_CELERY_EXT:
        CELERY_BROKER_TRANSPORT_OPTIONS["unanswered_exchanges"] = ["celeryev"]
    if "unanswered_acks" in TASKHUB_CELERY_EXT:
        CELERY_BROKER_TRANSPORT_OPTIONS["unanswered_acks"] = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# Celery: results (TaskExecution is the record of runs; this keeps beat's own tasks)
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", "django-db")
CELERY_RESULT_EXTENDED = True
CELERY_RESULT_EXPIRES = 7 * 24 * 3600  # seconds

# Celery: delivery and worker behaviour
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = TIME_ZONE
CELERY_ENABLE_UTC = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Leave stdout and stderr as they are: Django's logging writes to stderr, and
# once Celery had replaced it with a logger of its own, each write came back
# as a "celery.redirected" record, a character at a time.
CELERY_WORKER_REDIRECT_STDOUTS = False
# Keep database connections across tasks (the Django fixup closes them after
# every task otherwise): a reconnect per execution costs more than the command.
CELERY_DB_REUSE_MAX = 1000
CELERY_BEAT_SCHEDULER = "taskhub.scheduler:DatabaseScheduler"

# TaskHub: output capture
TASKHUB_OUTPUT_LIMIT = env_number("TASKHUB_OUTPUT_LIMIT", 1024 * 1024, minimum=1024, integer=True)  # bytes per stream
# Bytes of the files a command leaves in $TASKHUB_ARTIFACTS_DIR kept per attempt
# (in the database, with the execution); 0 = no artifacts directory.
TASKHUB_ARTIFACTS_LIMIT = env_number("TASKHUB_ARTIFACTS_LIMIT", 10 * 1024 * 1024, minimum=0, integer=True)
# TaskHub: the user commands run as (a name or uid), so they cannot read the
# worker's environment or memory; empty = the worker's own user. A worker
# that may not switch to it refuses to start.
TASKHUB_RUN_AS = env_str("TASKHUB_RUN_AS", "").strip()
# TaskHub: liveness and recovery (seconds)
TASKHUB_LOST_AFTER = env_number("TASKHUB_LOST_AFTER", 60, minimum=3)
TASKHUB_REQUEUE_AFTER = env_number("TASKHUB_REQUEUE_AFTER", 60, minimum=1)
TASKHUB_HEARTBEAT = env_number("TASKHUB_HEARTBEAT", min(5.0, TASKHUB_LOST_AFTER / 3), minimum=0.2)
TASKHUB_CANCEL_POLL = env_number("TASKHUB_CANCEL_POLL", 1.0, minimum=0.1)
# Threads pool (`celery worker --pool threads`, for many long commands on one
# host): at most this many of a process's executions hold a database
# connection at once (claiming or recording); one supervisor thread per
# process checks and heartbeats all of them on one more connection.
TASKHUB_THREAD_DB_CONNECTIONS = env_number("TASKHUB_THREAD_DB_CONNECTIONS", 8, minimum=1, integer=True)
# Keep this process's PostgreSQL connections in a pool (psycopg_pool) instead
# of one per thread: for threads-pool workers, whose executions then borrow a
# connection to claim and record instead of connecting each time.
TASKHUB_DB_POOL = env_bool("TASKHUB_DB_POOL", False)
if TASKHUB_DB_POOL and DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps them; Django refuses both
    # Not checked each time one is borrowed (a round trip, twice per
    # execution): after a connection error TaskHub checks the whole pool
    # (executions.db.check_pool).
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = False
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        # Execution slots, the supervisor, and the worker's main thread.
        "min_size": 2,
        "max_size": TASKHUB_THREAD_DB_CONNECTIONS + 2,
        "timeout": 60,  # seconds a thread waits for a free connection
    }
# Let PostgreSQL prepare the three statements every execution runs (launch
# INSERT, claim, outcome UPDATE; executions/statements.py) once per connection
# instead of parsing and planning them each time. Off behind a pooler that
# cannot keep prepared statements (PgBouncer in transaction mode before 1.21).
TASKHUB_DB_PREPARE = env_bool("TASKHUB_DB_PREPARE", True)
if TASKHUB_DB_PREPARE and DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # psycopg's connect() parameter (Django passes OPTIONS through; its own
    # default, None, turns preparing off). Django's cursors bind on the
    # client and are never prepared: only statements that ask are.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("prepare_threshold", 5)
# Retries due further ahead than this (seconds) are held in the database and
# sent by the reconciler when due, so no long ETA sits in the broker.
TASKHUB_MAX_ETA = env_number("TASKHUB_MAX_ETA", 600, minimum=0)
# TaskHub: how often a launch that waits for another task (wait_for_task) looks again (seconds)
TASKHUB_WATCH_POLL = env_number("TASKHUB_WATCH_POLL", 5, minimum=0.1)
# How long a worker keeps trying to write a finished execution's outcome
# while the database is unreachable (seconds).
TASKHUB_FINAL_WRITE_RETRY = env_number("TASKHUB_FINAL_WRITE_RETRY", 300, minimum=0)


def env_limit_overrides(name: str) -> dict[str, int]:
    """A JSON object of per-user or per-group limits, e.g. {"user:alice": 5, "group:ops": 50}."""
    import json  # here, not at the top: only this helper reads JSON

    raw = os.environ.get(name, "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}: not valid JSON ({exc}).") from None
    if not isinstance(value, dict):
        raise ImproperlyConfigured(f'{name}: expected a JSON object such as {{"user:alice": 5, "group:ops": 50}}.')
    for key, limit in value.items():
        kind, _, who = key.partition(":")
        if kind not in {"user", "group"} or not who:
            raise ImproperlyConfigured(f'{name}: key {key!r} must be "user:NAME" or "group:NAME".')
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise ImproperlyConfigured(f"{name}: the limit of {key!r} must be a whole number ≥ 0 (0 = unlimited).")
    return value


# Per-user limit on active runs (pending or running runs a user launched, or
# that a schedule launched for a task they own); a launch over it is refused
# (API 429). 0 = unlimited. Overrides: a user's own entry wins, else the most
# generous of their groups'.
TASKHUB_USER_ACTIVE_RUNS = env_number("TASKHUB_USER_ACTIVE_RUNS", 100, minimum=0, integer=True)
TASKHUB_USER_ACTIVE_RUNS_OVERRIDES = env_limit_overrides("TASKHUB_USER_ACTIVE_RUNS_OVERRIDES")
# On a warm shutdown (SIGTERM to a worker), seconds running commands get to
# finish; then they are stopped and handed back to run again as a new attempt.
TASKHUB_SHUTDOWN_GRACE = env_number("TASKHUB_SHUTDOWN_GRACE", 60, minimum=0)
# Recovery checks, run by beat at least every half of their interval.
# Whole seconds, rounded down: django-celery-beat stores intervals as integers.
TASKHUB_RECOVER_EVERY = max(1, int(min(TASKHUB_LOST_AFTER, TASKHUB_REQUEUE_AFTER) / 2))
# Two entries, so that neither check waits on the other. The database
# scheduler reads expire_seconds (it ignores "expires"): a check nobody ran
# in time is dropped, not piled up for later.
CELERY_BEAT_SCHEDULE = {
    name: {"task": task, "schedule": TASKHUB_RECOVER_EVERY, "options": {"expire_seconds": TASKHUB_RECOVER_EVERY}}
    for name, task in (
        ("taskhub-reap-lost", "executions.reap_lost"),
        ("taskhub-reconcile-pending", "executions.reconcile_pending"),
    )
}
if BROKER_SCHEME in {"amqp", "amqps", "pyamqp"}:
    CELERY_TASK_QUEUE_MAX_PRIORITY = 10
    CELERY_TASK_DEFAULT_PRIORITY = 5

# Worker liveness for /healthz: seconds between a worker's writes of its row
# (executions.Worker); one that missed three is reported not alive.
TASKHUB_WORKER_HEARTBEAT = env_number("TASKHUB_WORKER_HEARTBEAT", 10, minimum=0.5)

# Metrics and notifications.
# /metrics answers a request that bears TASKHUB_METRICS_TOKEN (Authorization:
# Bearer …) or comes from an address in TASKHUB_METRICS_ALLOW (addresses or
# networks, comma-separated; REMOTE_ADDR, so behind a proxy list the proxy).
TASKHUB_METRICS_TOKEN = env_secret("TASKHUB_METRICS_TOKEN", "")
TASKHUB_METRICS_ALLOW = env_list("TASKHUB_METRICS_ALLOW", ["127.0.0.1", "::1"])
# Counters and histograms of the web, worker and beat processes of one host
# live in files in this folder (prometheus-client's multiprocess mode), and
# /metrics adds them up. Every process of the host must see the same folder;
# empty it when all of them are stopped. Set in the environment here so that
# prometheus-client, imported later, and the processes a worker forks see it.
PROMETHEUS_MULTIPROC_DIR = env_str("PROMETHEUS_MULTIPROC_DIR", str(VAR_DIR / "metrics"))
os.environ["PROMETHEUS_MULTIPROC_DIR"] = PROMETHEUS_MULTIPROC_DIR
# Notification e-mails go through Django's mail settings.
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_number("EMAIL_PORT", 25, minimum=1, integer=True)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_secret("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
EMAIL_TIMEOUT = env_number("EMAIL_TIMEOUT", 10, minimum=1)  # seconds
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "TaskHub <taskhub@localhost>")
SERVER_EMAIL = env_str("SERVER_EMAIL", DEFAULT_FROM_EMAIL)
# Where links in notifications point (e.g. https://taskhub.example.com); empty = no links.
TASKHUB_BASE_URL = env_str("TASKHUB_BASE_URL", "").rstrip("/")
# A failed delivery is tried again this many times, after TASKHUB_NOTIFY_RETRY_DELAY
# seconds, doubling each time up to TASKHUB_MAX_ETA (so no long ETA sits in the broker).
TASKHUB_NOTIFY_RETRIES = env_number("TASKHUB_NOTIFY_RETRIES", 5, minimum=0, integer=True)
TASKHUB_NOTIFY_RETRY_DELAY = env_number("TASKHUB_NOTIFY_RETRY_DELAY", 30, minimum=0)
TASKHUB_WEBHOOK_TIMEOUT = env_number("TASKHUB_WEBHOOK_TIMEOUT", 10, minimum=0.5)  # seconds per request
# Queue of the delivery messages; served by the default worker unless changed.
TASKHUB_NOTIFY_QUEUE = env_str("TASKHUB_NOTIFY_QUEUE", CELERY_TASK_DEFAULT_QUEUE)
# Seconds a worker process keeps its list of which tasks have notifications
# before reading it again (so a task without any costs no query per execution).
TASKHUB_NOTIFY_REFRESH = env_number("TASKHUB_NOTIFY_REFRESH", 10, minimum=0)
