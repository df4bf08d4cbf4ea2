"""The one settings module of Ciphervault, driven by the environment only.

The embedded default (no variables set) runs on SQLite under ``var/``, serves ciphertext from the
filesystem and runs Celery tasks in-process, so that ``make run`` needs no server. Production is
selected with ``VAULT_ENV=production``, which refuses to start without a secret key or with DEBUG
on. The configuration reference is in README.md; keep the two in step.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sys
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from vault.env import EnvError, env_bool, env_int, env_json, env_list, env_secret, env_str

BASE_DIR = Path(__file__).resolve().parent.parent


def _fail(message: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"Ciphervault configuration: {message}")


try:
    VAULT_ENV = env_str("VAULT_ENV", "development").strip().lower()
    if VAULT_ENV not in {"development", "production"}:
        raise EnvError(f"VAULT_ENV must be 'development' or 'production'; got {VAULT_ENV!r}")
    PRODUCTION = VAULT_ENV == "production"
    DATA_DIR = Path(env_str("VAULT_DATA_DIR", str(BASE_DIR / "var"))).resolve()
    DEBUG = env_bool("VAULT_DEBUG", False)
    _secret_key = env_secret("VAULT_SECRET_KEY")
    _token_hmac_key = env_secret("VAULT_TOKEN_HMAC_KEY")
    _audit_hmac_key = env_secret("VAULT_AUDIT_HMAC_KEY")
    ALLOWED_HOSTS = env_list(
        "VAULT_ALLOWED_HOSTS",
        [] if PRODUCTION else ["127.0.0.1", "localhost", "[::1]", "testserver"],
    )
    CSRF_TRUSTED_ORIGINS = env_list("VAULT_CSRF_TRUSTED_ORIGINS", [])
    _database_url = env_secret("DATABASE_URL")
    _redis_url = env_secret("REDIS_URL")
    _tls_proxy = env_bool("VAULT_BEHIND_TLS_PROXY", False)
    _ssl_redirect = env_bool("VAULT_SSL_REDIRECT", PRODUCTION)
    _hsts_seconds = env_int("VAULT_HSTS_SECONDS", 31536000 if PRODUCTION else 0, minimum=0)
    _hsts_preload = env_bool("VAULT_HSTS_PRELOAD", PRODUCTION)
    # PCI-DSS 8.3.4: lock out after at most 10 failed attempts, for at least 30 minutes.
    VAULT_LOCKOUT_THRESHOLD = env_int("VAULT_LOCKOUT_THRESHOLD", 10, minimum=1, maximum=10)
    VAULT_LOCKOUT_MINUTES = env_int("VAULT_LOCKOUT_MINUTES", 30, minimum=30)
    # PCI-DSS 8.2.8: idle sessions end after at most 15 minutes.
    VAULT_SESSION_IDLE_MINUTES = env_int("VAULT_SESSION_IDLE_MINUTES", 15, minimum=1, maximum=15)
    # PCI-DSS 8.3.6 and 8.3.7: at least 12 characters, none of the last 4 reused.
    VAULT_PASSWORD_MIN_LENGTH = env_int("VAULT_PASSWORD_MIN_LENGTH", 12, minimum=12)
    VAULT_PASSWORD_HISTORY = env_int("VAULT_PASSWORD_HISTORY", 4, minimum=4)
    VAULT_TOKEN_DEFAULT_DAYS = env_int("VAULT_TOKEN_DEFAULT_DAYS", 90, minimum=1)
    VAULT_TOKEN_MAX_DAYS = env_int("VAULT_TOKEN_MAX_DAYS", 365, minimum=1)
    VAULT_MAX_OBJECT_BYTES = env_int("VAULT_MAX_OBJECT_BYTES", 5 * 1024**3, minimum=1)
    VAULT_OBJECT_RETENTION_DAYS = env_int("VAULT_OBJECT_RETENTION_DAYS", 30, minimum=0)
    VAULT_UPLOAD_SESSION_HOURS = env_int("VAULT_UPLOAD_SESSION_HOURS", 24, minimum=1, maximum=720)
    # NIST SP 800-57: a key-encryption key's originator-usage period is at most two years.
    VAULT_KEK_CRYPTOPERIOD_DAYS = env_int(
        "VAULT_KEK_CRYPTOPERIOD_DAYS", 365, minimum=1, maximum=730
    )
    # Wraps per key version before it is rotated: AES-GCM with random 96-bit nonces must stay
    # far below 2^32 invocations per key (NIST SP 800-38D).
    VAULT_KEK_MAX_WRAPS = env_int("VAULT_KEK_MAX_WRAPS", 2**26, minimum=1, maximum=2**31)
    VAULT_REWRAP_BATCH = env_int("VAULT_REWRAP_BATCH", 100, minimum=1, maximum=10_000)
    VAULT_REWRAP_RATE = env_int("VAULT_REWRAP_RATE", 0, minimum=0)
    VAULT_CAMPAIGN_SLICES = env_int("VAULT_CAMPAIGN_SLICES", 4, minimum=1, maximum=64)
    VAULT_CAMPAIGN_LEASE_SECONDS = env_int("VAULT_CAMPAIGN_LEASE_SECONDS", 120, minimum=1)
    VAULT_CAMPAIGN_INTERVAL_SECONDS = env_int("VAULT_CAMPAIGN_INTERVAL_SECONDS", 60, minimum=1)
    # Dual control (PCI-DSS 3.6.1.2, 3.7.6): approvals from distinct custodians, never the
    # requester; requests expire; a destruction waits before it runs and can be cancelled.
    VAULT_APPROVALS_REQUIRED = env_int("VAULT_APPROVALS_REQUIRED", 2, minimum=2, maximum=10)
    VAULT_APPROVAL_HOURS = env_int("VAULT_APPROVAL_HOURS", 72, minimum=1, maximum=720)
    VAULT_SHRED_WAIT_DAYS = env_int("VAULT_SHRED_WAIT_DAYS", 7, minimum=0, maximum=90)
    VAULT_AUTH_FAILURE_LIMIT = env_int("VAULT_AUTH_FAILURE_LIMIT", 20, minimum=1)
    VAULT_AUTH_FAILURE_WINDOW = env_int("VAULT_AUTH_FAILURE_WINDOW_SECONDS", 300, minimum=1)
    VAULT_KEY_BACKENDS = env_json("VAULT_KEY_BACKENDS", None)
    VAULT_SIGNING_BACKEND = env_str("VAULT_SIGNING_BACKEND", "")
    VAULT_REPORT_SIGNING_BACKEND = env_str("VAULT_REPORT_SIGNING_BACKEND", "")
    # PCI-DSS 3.6.1: keys in the care of the fewest custodians (KEY-005's ceiling per tenant).
    VAULT_MAX_CUSTODIANS = env_int("VAULT_MAX_CUSTODIANS", 5, minimum=1, maximum=50)
    VAULT_AUDIT_ORIGIN = env_str("VAULT_AUDIT_ORIGIN", "ciphervault.local")
    # PCI-DSS 10.5.1: at least 12 months of audit history.
    VAULT_AUDIT_RETENTION_DAYS = env_int("VAULT_AUDIT_RETENTION_DAYS", 400, minimum=365)
    LOG_LEVEL = env_str("VAULT_LOG_LEVEL", "INFO").upper()
except EnvError as exc:
    raise _fail(str(exc)) from None

if PRODUCTION and DEBUG:
    raise _fail("VAULT_DEBUG must be off when VAULT_ENV=production")
if VAULT_TOKEN_DEFAULT_DAYS > VAULT_TOKEN_MAX_DAYS:
    raise _fail("VAULT_TOKEN_DEFAULT_DAYS must not exceed VAULT_TOKEN_MAX_DAYS")


def _embedded_secret(name: str) -> str:
    """Generate once and keep a secret under DATA_DIR (embedded default only)."""
    path = DATA_DIR / name
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(50)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    return value


if _secret_key:
    SECRET_KEY = _secret_key
elif PRODUCTION:
    raise _fail("VAULT_SECRET_KEY (or VAULT_SECRET_KEY_FILE) is required when VAULT_ENV=production")
else:
    SECRET_KEY = _embedded_secret("secret_key")
if PRODUCTION and len(SECRET_KEY) < 50:
    raise _fail("VAULT_SECRET_KEY must be at least 50 characters when VAULT_ENV=production")
if PRODUCTION and not ALLOWED_HOSTS:
    raise _fail("VAULT_ALLOWED_HOSTS is required when VAULT_ENV=production")

if VAULT_KEY_BACKENDS is None:
    # The embedded default: a local software keystore under var/ (refused in production by the
    # keys.E005 system check; production configures its HSM, TPM or KMS here).
    VAULT_KEY_BACKENDS = {}
    if not PRODUCTION:
        (DATA_DIR / "keystore").mkdir(parents=True, exist_ok=True, mode=0o700)
        VAULT_KEY_BACKENDS["local"] = {
            "BACKEND": "kms_plugins.local.LocalKeyBackend",
            "OPTIONS": {
                "PATH": str(DATA_DIR / "keystore" / "keys.json"),
                "KEY_FILE": str(DATA_DIR / "keystore" / "master.key"),
            },
        }
        # The platform log's checkpoints (and tenants whose backend cannot sign) sign here.
        VAULT_SIGNING_BACKEND = VAULT_SIGNING_BACKEND or "local"

# The backends a tenant's owner may create the tenant's keys in from the console (binding a
# tenant to a backend is otherwise the operator's `manage.py tenant_bind_backend`). Under the
# embedded default: its local keystore; elsewhere none unless listed.
VAULT_OWNER_BACKENDS = env_list(
    "VAULT_OWNER_BACKENDS", ["local"] if "local" in VAULT_KEY_BACKENDS and not PRODUCTION else []
)

# API tokens are stored as HMAC-SHA256 under this key; by default it derives from SECRET_KEY.
VAULT_TOKEN_HMAC_KEY = _token_hmac_key or SECRET_KEY
# Sensitive values in audit events are stored as HMACs under keys derived from this one.
VAULT_AUDIT_HMAC_KEY = hashlib.sha256(
    b"ciphervault/v1/audit-hmac-key/" + (_audit_hmac_key or SECRET_KEY).encode("utf-8")
).digest()

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "vault.core",
    "vault.accounts",
    "vault.tenants",
    "vault.tokens",
    "vault.keys",
    "vault.objects",
    "vault.audit",
    "vault.lifecycle",
    "vault.api",
    "vault.console",
    "compliance",
]

MIDDLEWARE = [
    "vault.core.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "vault.core.middleware.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "vault.audit.context.AuditContextMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Innermost, so that its process_exception runs first for a view's exception.
    "vault.core.outages.DependencyFailureMiddleware",
]

ROOT_URLCONF = "vault.urls"
WSGI_APPLICATION = "vault.wsgi.application"
AUTH_USER_MODEL = "accounts.User"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

if _database_url:
    try:
        DATABASES = {
            "default": dj_database_url.parse(
                _database_url, conn_max_age=60, conn_health_checks=True
            )
        }
    except ValueError as exc:
        raise _fail(f"DATABASE_URL cannot be parsed: {exc}") from None
else:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(DATA_DIR / "vault.sqlite3"),
            "OPTIONS": {
                # Writers queue instead of failing with "database is locked" under threads.
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }

REDIS_URL = _redis_url or ""
# Every connection to Redis gives up after this many seconds: a frozen Redis (a stopped process
# still accepts connections) must fail a request with a 503, never hang it.
REDIS_SOCKET_TIMEOUT = 5
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {
                "socket_timeout": REDIS_SOCKET_TIMEOUT,
                "socket_connect_timeout": REDIS_SOCKET_TIMEOUT,
            },
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": VAULT_PASSWORD_MIN_LENGTH},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "vault.accounts.validators.LettersAndDigitsValidator"},
    {
        "NAME": "vault.accounts.validators.PasswordHistoryValidator",
        "OPTIONS": {"history": VAULT_PASSWORD_HISTORY},
    },
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "static"
if not PRODUCTION:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(DATA_DIR / "storage")},
    },
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Outside production the static files are served from the apps directly, without collectstatic.
WHITENOISE_USE_FINDERS = not PRODUCTION

LOGIN_URL = "console:login"
LOGIN_REDIRECT_URL = "console:home"
LOGOUT_REDIRECT_URL = "console:login"

# PCI-DSS 8.2.8: sessions end after VAULT_SESSION_IDLE_MINUTES of inactivity.
SESSION_COOKIE_AGE = VAULT_SESSION_IDLE_MINUTES * 60
SESSION_SAVE_EVERY_REQUEST = True
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = PRODUCTION
CSRF_COOKIE_SECURE = PRODUCTION
SECURE_SSL_REDIRECT = _ssl_redirect
# Load balancers probe over plain HTTP; a redirect would read as "down".
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SECURE_HSTS_SECONDS = _hsts_seconds
SECURE_HSTS_INCLUDE_SUBDOMAINS = _hsts_seconds > 0
SECURE_HSTS_PRELOAD = _hsts_preload and _hsts_seconds > 0
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if _tls_proxy:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SILENCED_SYSTEM_CHECKS: list[str] = []
if PRODUCTION and not _ssl_redirect and _tls_proxy:
    # A TLS-terminating proxy that redirects HTTP itself; the proxy header is trusted above.
    SILENCED_SYSTEM_CHECKS.append("security.W008")
if PRODUCTION and not _hsts_preload:
    # The operator chose not to be on the browsers' preload list (VAULT_HSTS_PRELOAD=0).
    SILENCED_SYSTEM_CHECKS.append("security.W021")

OTP_TOTP_ISSUER = "Ciphervault"

DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["vault.api.authentication.BearerTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["vault.api.permissions.HasTenantRole"],
    "DEFAULT_PAGINATION_CLASS": "vault.api.pagination.Pagination",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "vault.api.schema.VaultAutoSchema",
    "EXCEPTION_HANDLER": "vault.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
    "PAGE_SIZE": 50,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Ciphervault API",
    "DESCRIPTION": (
        "REST API of Ciphervault. Authenticate with `Authorization: Bearer <token>`; every error "
        "answers with the same shape and a stable `code`."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "ENUM_NAME_OVERRIDES": {
        "RoleEnum": "vault.tenants.models.Role",
        "WaiverStateEnum": "compliance.models.WaiverState",
        "RunStateEnum": "compliance.models.RunState",
    },
}

# Celery: Redis when REDIS_URL is set; otherwise tasks run eagerly in-process and the embedded
# scheduler (vault.core.scheduler) runs the beat schedule inside the serving process.
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_RESULT_BACKEND = REDIS_URL
    CELERY_TASK_ALWAYS_EAGER = False
    # kombu and Celery's result backend wait forever (or 120 s) on a frozen Redis by default.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "socket_timeout": REDIS_SOCKET_TIMEOUT,
        "socket_connect_timeout": REDIS_SOCKET_TIMEOUT,
    }
    CELERY_REDIS_SOCKET_TIMEOUT = REDIS_SOCKET_TIMEOUT
    CELERY_REDIS_SOCKET_CONNECT_TIMEOUT = REDIS_SOCKET_TIMEOUT
else:
    CELERY_BROKER_URL = "memory://"
    CELERY_RESULT_BACKEND = "cache+memory://"
    CELERY_TASK_ALWAYS_EAGER = True
    CELERY_TASK_EAGER_PROPAGATES = True
CELERY_BEAT_SCHEDULE = {
    "vault.audit.integrate": {
        "task": "vault.audit.integrate",
        "schedule": timedelta(minutes=1),
    },
    "vault.lifecycle.run_campaigns": {
        "task": "vault.lifecycle.run_campaigns",
        "schedule": timedelta(seconds=VAULT_CAMPAIGN_INTERVAL_SECONDS),
    },
    "vault.keys.health_check": {
        "task": "vault.keys.health_check",
        "schedule": timedelta(minutes=5),
    },
    "vault.lifecycle.approvals_due": {
        "task": "vault.lifecycle.approvals_due",
        "schedule": timedelta(minutes=5),
    },
    "vault.lifecycle.rotate_due": {
        "task": "vault.lifecycle.rotate_due",
        "schedule": timedelta(hours=24),
    },
    "vault.audit.prune": {
        "task": "vault.audit.prune",
        "schedule": timedelta(hours=24),
    },
    "vault.objects.sweep_orphans": {
        "task": "vault.objects.sweep_orphans",
        "schedule": timedelta(hours=24),
    },
    "vault.objects.purge_deleted": {
        "task": "vault.objects.purge_deleted",
        "schedule": timedelta(hours=1),
    },
    "vault.objects.purge_expired_uploads": {
        "task": "vault.objects.purge_expired_uploads",
        "schedule": timedelta(hours=1),
    },
    # Daily compliance runs: the task runs hourly and starts the tenants whose last scheduled
    # run is a day old (and every tenant on the first tick of the embedded scheduler).
    "compliance.run_due": {
        "task": "compliance.run_due",
        "schedule": timedelta(hours=1),
    },
    "vault.core.clear_expired_sessions": {
        "task": "vault.core.clear_expired_sessions",
        "schedule": timedelta(hours=1),
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "vault.core.logging.RequestIdFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "stream": sys.stderr,
            "formatter": "plain",
            "filters": ["request_id"],
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
