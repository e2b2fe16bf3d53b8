"""Configuration: defaults, `instance/config.py`, the environment, and refusals to start unsafely."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from recovery import config, create_app
from recovery.config import DEFAULT_SECRET_KEY, ConfigError

SECRET = "0123456789abcdef0123456789abcdef"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start from no settings in the environment, whatever the shell running pytest has."""
    for key in config.defaults("instance"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def instance(tmp_path: Path) -> Path:
    return tmp_path / "instance"


def load(instance: Path, **overrides: Any) -> dict[str, Any]:
    return config.load(str(instance), overrides)


# --- refusing to start -------------------------------------------------------------


@pytest.mark.parametrize("secret", [None, "", DEFAULT_SECRET_KEY])
def test_production_refuses_a_missing_or_default_secret_key(instance, monkeypatch, secret):
    monkeypatch.setenv("APP_ENV", "production")
    if secret is not None:
        monkeypatch.setenv("SECRET_KEY", secret)

    with pytest.raises(ConfigError, match="Refusing to start: SECRET_KEY is unset or the built-in") as error:
        load(instance)

    assert "secrets.token_hex" in str(error.value), "the message says how to fix it"


def test_production_is_the_default_environment(instance):
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        load(instance)


def test_create_app_refuses_too(monkeypatch):
    """What `gunicorn wsgi:app` runs: the factory raises before serving anything."""
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("SECRET_KEY", DEFAULT_SECRET_KEY)

    with pytest.raises(ConfigError, match="SECRET_KEY"):
        create_app()


@pytest.mark.parametrize(
    ("argv", "schema"),
    [
        (["/venv/bin/flask", "db", "upgrade"], True),
        (["/venv/bin/flask", "--app", "wsgi", "db", "check"], True),
        (["/venv/bin/flask", "-A", "wsgi", "--env-file", ".env", "--no-debug", "db", "migrate"], True),
        (["/usr/lib/python3/site-packages/flask/__main__.py", "--app=wsgi", "db", "check"], True),
        (["/venv/bin/flask", "--app", "db", "worker"], False),  # an app named db is not the command
        (["/venv/bin/flask", "worker", "db"], False),
        (["/venv/bin/flask", "run"], False),
        (["/venv/bin/gunicorn", "wsgi:app"], False),
        (["/venv/bin/pytest", "db"], False),
        ([], False),
    ],
)
def test_only_flask_db_commands_count_as_schema_commands(argv, schema):
    assert config._schema_command(argv) is schema


def test_flask_db_check_runs_without_a_secret_and_serving_does_not(tmp_path: Path) -> None:
    """The release phase's upgrade and a models check read no secret; everything else is refused."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    flask = str(Path(sys.executable).parent / "flask")
    env = {k: v for k, v in os.environ.items() if k not in config.defaults("instance")}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'schema.sqlite3'}"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [flask, "--app", "wsgi", *args], cwd=root, env=env, capture_output=True, text=True, timeout=120
        )

    assert run("db", "upgrade").returncode == 0
    check = run("db", "check")
    assert check.returncode == 0 and "No new upgrade operations detected" in check.stdout + check.stderr
    refused = run("routes")
    assert refused.returncode != 0 and "Refusing to start: SECRET_KEY" in refused.stderr


@pytest.mark.parametrize("env", ["development", "testing"])
def test_other_environments_accept_the_development_secret(instance, env):
    assert load(instance, APP_ENV=env)["SECRET_KEY"] == DEFAULT_SECRET_KEY


@pytest.mark.parametrize("env", ["prod", "Production", "staging", ""])
def test_unknown_app_env_is_refused(instance, env):
    with pytest.raises(ConfigError, match="APP_ENV must be one of development, testing, production"):
        load(instance, APP_ENV=env, SECRET_KEY=SECRET)


@pytest.mark.parametrize(
    "key", ["LOGIN_FAILURES_PER_MINUTE", "SUCCESS_LOOKUPS_PER_MINUTE", "STRIPE_RECONCILE_AFTER_MINUTES"]
)
def test_a_limit_of_zero_is_refused_by_name(instance, monkeypatch, key):
    monkeypatch.setenv(key, "0")

    with pytest.raises(ConfigError, match=f"{key} must be at least 1."):
        load(instance, APP_ENV="development")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("PROXY_FIX", "yes", "PROXY_FIX must be a whole number; got 'yes'."),
        ("MAIL_PORT", "25x", "MAIL_PORT must be a whole number"),
        ("LOGIN_FAILURES_PER_MINUTE", "", "LOGIN_FAILURES_PER_MINUTE must be a whole number"),
        ("MAIL_USE_TLS", "maybe", "MAIL_USE_TLS must be true or false"),
    ],
)
def test_malformed_environment_values_are_refused_by_name(instance, monkeypatch, key, value, message):
    monkeypatch.setenv(key, value)

    with pytest.raises(ConfigError, match=message):
        load(instance, APP_ENV="development")


# --- where settings come from --------------------------------------------------------


def test_environment_overrides_defaults_with_types(instance, monkeypatch):
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("SECRET_KEY", SECRET)
    monkeypatch.setenv("REDIS_URL", "redis://cache.internal:6380/2")
    monkeypatch.setenv("PROXY_FIX", "2")
    monkeypatch.setenv("MAIL_USE_TLS", "True")
    monkeypatch.setenv("LOGIN_FAILURES_PER_MINUTE", " 10 ")
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_123")
    monkeypatch.setenv("SECRET_KEY_FALLBACKS", " old-key-1, old-key-2 ,")

    settings = load(instance)

    assert settings["SECRET_KEY"] == SECRET
    assert settings["REDIS_URL"] == settings["RATELIMIT_STORAGE_URI"] == "redis://cache.internal:6380/2"
    assert settings["PROXY_FIX"] == 2
    assert settings["MAIL_USE_TLS"] is True
    assert settings["LOGIN_FAILURES_PER_MINUTE"] == 10
    assert settings["STRIPE_SECRET_KEY"] == "sk_test_123"
    assert settings["SECRET_KEY_FALLBACKS"] == ["old-key-1", "old-key-2"]


@pytest.mark.parametrize(
    ("raw", "expected"), [("0", False), ("no", False), ("off", False), ("1", True), ("on", True)]
)
def test_boolean_words(instance, monkeypatch, raw, expected):
    monkeypatch.setenv("MAIL_USE_TLS", raw)

    assert load(instance, APP_ENV="development")["MAIL_USE_TLS"] is expected


def test_instance_config_file_is_read_and_the_environment_wins(instance, monkeypatch):
    instance.mkdir()
    (instance / "config.py").write_text(
        'APP_ENV = "development"\nBASE_URL = "https://from-file.example"\nREDIS_URL = "redis://file:6379/0"\n'
        "lowercase_is_ignored = 1\n"
    )
    monkeypatch.setenv("REDIS_URL", "redis://env:6379/0")

    settings = load(instance)

    assert settings["APP_ENV"] == "development"
    assert settings["BASE_URL"] == "https://from-file.example"
    assert settings["REDIS_URL"] == "redis://env:6379/0"
    assert "lowercase_is_ignored" not in settings


def test_explicit_overrides_win_over_the_environment(instance, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://env:6379/0")

    assert (
        load(instance, APP_ENV="testing", REDIS_URL="redis://test:6379/1")["REDIS_URL"]
        == "redis://test:6379/1"
    )


# --- derived settings ----------------------------------------------------------------


def test_sqlite_in_the_instance_folder_when_database_url_is_unset(instance):
    settings = load(instance, APP_ENV="development")

    assert settings["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{instance / 'recovery.sqlite3'}"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u:p@db.example:5432/app", "postgresql+psycopg://u:p@db.example:5432/app"),
        ("postgresql://u:p@db.example/app", "postgresql+psycopg://u:p@db.example/app"),
        ("postgresql+psycopg://u@db.example/app", "postgresql+psycopg://u@db.example/app"),
        ("sqlite:////var/lib/recovery.sqlite3", "sqlite:////var/lib/recovery.sqlite3"),
    ],
)
def test_database_urls_are_normalised_for_psycopg_3(instance, monkeypatch, url, expected):
    monkeypatch.setenv("DATABASE_URL", url)

    assert load(instance, APP_ENV="development")["SQLALCHEMY_DATABASE_URI"] == expected


@pytest.mark.parametrize(
    ("env", "secure"), [("production", True), ("development", False), ("testing", False)]
)
def test_cookie_flags_follow_the_environment(instance, env, secure):
    settings = load(instance, APP_ENV=env, SECRET_KEY=SECRET)

    for prefix in ("SESSION", "REMEMBER"):
        assert settings[f"{prefix}_COOKIE_HTTPONLY"] is True
        assert settings[f"{prefix}_COOKIE_SAMESITE"] == "Lax"
        assert settings[f"{prefix}_COOKIE_SECURE"] is secure


def test_production_trusts_only_the_base_url_host_and_allowed_hosts(instance):
    settings = load(
        instance,
        APP_ENV="production",
        SECRET_KEY=SECRET,
        BASE_URL="https://pay.example.com",
        ALLOWED_HOSTS=" www.example.com , ",
    )

    assert settings["TRUSTED_HOSTS"] == ["www.example.com", "pay.example.com"]
    assert settings["PREFERRED_URL_SCHEME"] == "https"


def test_development_also_trusts_loopback(instance):
    settings = load(instance, APP_ENV="development", BASE_URL="http://127.0.0.1:5000")

    assert set(settings["TRUSTED_HOSTS"]) == {"127.0.0.1", "localhost"}


def test_upload_limit_leaves_room_for_the_form_around_the_file(instance):
    settings = load(instance, APP_ENV="development", CSV_MAX_BYTES=1000)

    assert settings["MAX_CONTENT_LENGTH"] > 1000


# --- typed settings ----------------------------------------------------------------


def test_typed_settings_are_read_from_the_config_once_per_app(tmp_path: Path, monkeypatch) -> None:
    from recovery.payments.gateway import StripeSettings

    monkeypatch.setenv("RQ_QUEUES", "default, slow")
    monkeypatch.setenv("PROXY_FIX", "2")
    app = create_app(
        {
            "APP_ENV": "testing",
            "DATABASE_URL": f"sqlite:///{tmp_path}/x.sqlite3",
            "STRIPE_WEBHOOK_RETRY_SECONDS": "5,10",
            "STRIPE_SECRET_KEY": "sk_test_123",
        }
    )

    read = config.settings(app=app)
    assert read.queues == ("default", "slow")
    assert read.proxy_hops == 2 and not read.is_production
    assert read.webhook_retry_intervals == (5, 10)
    assert config.settings(app=app) is read  # built once, not per call
    assert config.settings(StripeSettings, app).livemode is False  # any kind with from_config

    app.config["SEND_BATCH_SIZE"] = 7  # a test changing the config after the app is made...
    assert config.settings(app=app).send_batch_size == 50
    config.forget_settings(app)  # ...makes the settings read it again
    assert config.settings(app=app).send_batch_size == 7
