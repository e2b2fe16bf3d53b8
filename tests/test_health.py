"""`GET /healthz`: the database and Redis checks, 200 or 503, public and free of secrets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from recovery import create_app
from recovery.extensions import db
from tests.conftest import base_config

CLOSED_REDIS = "redis://127.0.0.1:1/0"


def test_healthy_answers_200_with_each_check(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json == {
        "status": "ok",
        "checks": {"database": {"status": "ok"}, "redis": {"status": "ok"}},
    }
    assert response.headers["Cache-Control"] == "no-store"


def test_needs_no_sign_in_and_sets_no_session(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert "Set-Cookie" not in response.headers


@pytest.mark.parametrize("app_config", [{"REDIS_URL": CLOSED_REDIS}])
def test_unreachable_redis_answers_503_naming_the_check(client):
    response = client.get("/healthz")

    assert response.status_code == 503
    body = response.json
    assert body["status"] == "error"
    assert body["checks"]["database"] == {"status": "ok"}
    assert body["checks"]["redis"]["status"] == "error"
    assert body["checks"]["redis"]["error"] == "ConnectionError"
    assert "127.0.0.1:1" not in response.get_data(as_text=True), "no connection details leak"


@pytest.fixture
def make_app(redis_url: str) -> Iterator[Callable[..., Flask]]:
    """Build extra apps (not the `app` fixture's) and release their connections afterwards."""
    apps: list[Flask] = []

    def make(database_url: str, **overrides: Any) -> Flask:
        app = create_app(base_config(database_url, redis_url, **overrides))
        apps.append(app)
        return app

    yield make
    for app in apps:
        with app.app_context():
            db.engine.dispose()


@pytest.mark.parametrize(
    "database_url",
    [
        "sqlite:///{tmp}/missing-folder/recovery.sqlite3",
        "postgresql://postgres@127.0.0.1:1/recovery",
    ],
    ids=["sqlite-unopenable", "postgresql-closed-port"],
)
def test_unreachable_database_answers_503_naming_the_check(make_app, tmp_path: Path, database_url):
    app = make_app(database_url.format(tmp=tmp_path))

    response = app.test_client().get("/healthz")

    assert response.status_code == 503
    body = response.json
    assert body["checks"]["database"] == {"status": "error", "error": "OperationalError"}
    assert body["checks"]["redis"] == {"status": "ok"}
    assert "127.0.0.1:1" not in response.get_data(as_text=True)
    assert "postgres@" not in response.get_data(as_text=True)


def test_health_failure_is_logged_with_the_check_name(make_app, tmp_path, capfd):
    app = make_app(f"sqlite:///{tmp_path}/missing/x.sqlite3", LOG_LEVEL="INFO")

    app.test_client().get("/healthz")

    logged = capfd.readouterr().err
    assert '"event": "health_check_failed"' in logged
    assert '"check": "database"' in logged
