"""Recovery: win back failed card payments."""

from __future__ import annotations

from typing import Any

from flask import Flask

from recovery import config as config_module


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the application; `config` overrides everything else (tests)."""
    from recovery.boundary import RecoveryApp

    app = RecoveryApp(__name__, instance_relative_config=True)
    app.config.from_mapping(config_module.load(app.instance_path, config))
    if config_module.settings(app=app).database_uri.startswith("sqlite:///"):
        import os

        os.makedirs(app.instance_path, exist_ok=True)
    register_logging(app)
    register_extensions(app)
    register_request_limits(app)
    register_security(app)
    register_blueprints(app)
    register_template_helpers(app)
    register_error_handlers(app)
    register_commands(app)
    return app


def register_logging(app: Flask) -> None:
    from recovery import logs

    logs.init_app(app)


def register_extensions(app: Flask) -> None:
    from recovery import database, queue
    from recovery.extensions import csrf, db, limiter, login_manager, mail, migrate
    from recovery.payments import gateway as payments_gateway

    db.init_app(app)
    with app.app_context():
        for engine in db.engines.values():
            database.ping_when_idle(engine)  # instead of pool_pre_ping
    migrate.init_app(app, db, directory=str(app.root_path + "/../migrations"))
    csrf.init_app(app)
    mail.init_app(app)
    limiter.init_app(app)
    login_manager.init_app(app)
    queue.init_app(app)
    payments_gateway.init_app(app)


def register_request_limits(app: Flask) -> None:
    from recovery import errors

    app.before_request(errors.refuse_long_urls)  # first: a sign-in redirect would carry the URL along


def register_security(app: Flask) -> None:
    from recovery import security
    from recovery.webhooks import receiver

    # Inside ProxyFix, which security adds, so that it sees the client's own address.
    receiver.install(app)
    security.init_app(app)


def register_blueprints(app: Flask) -> None:
    """Register every feature's blueprint.

    One import and one entry per feature: a plain list, which grows past 60
    lines with the features and is no harder to read for it.
    """
    from recovery.account.views import bp as account_bp
    from recovery.api.imports import bp as imports_api_bp
    from recovery.api.openapi import bp as openapi_bp
    from recovery.api.reference import bp as api_reference_bp
    from recovery.api.transactions import bp as api_bp
    from recovery.audit_log.views import bp as audit_log_bp
    from recovery.auth.views import bp as auth_bp
    from recovery.campaigns.api import bp as campaigns_api_bp
    from recovery.campaigns.views import bp as campaigns_bp
    from recovery.customer.views import bp as customer_bp
    from recovery.exports.views import bp as exports_bp
    from recovery.health.views import bp as health_bp
    from recovery.imports.views import bp as imports_bp
    from recovery.organizations.views import bp as organizations_bp
    from recovery.payments.api import bp as payments_api_bp
    from recovery.payments.views import bp as payments_bp
    from recovery.recoveries.api import bp as recoveries_api_bp
    from recovery.recoveries.outbox_views import bp as messaging_bp
    from recovery.recoveries.resend_views import bp as messages_bp
    from recovery.recoveries.twilio_hooks import bp as twilio_bp
    from recovery.recoveries.views import bp as recoveries_bp
    from recovery.review.views import bp as review_bp
    from recovery.rules.api import bp as rules_api_bp
    from recovery.rules.views import bp as rules_bp
    from recovery.staffmail.views import bp as staffmail_bp
    from recovery.tokens.views import bp as tokens_bp
    from recovery.transactions.views import bp as transactions_bp
    from recovery.users.views import bp as users_bp
    from recovery.webhooks.views import bp as webhooks_bp

    for bp in (
        auth_bp,
        health_bp,
        transactions_bp,
        exports_bp,
        imports_bp,
        payments_bp,
        recoveries_bp,
        messaging_bp,
        messages_bp,
        users_bp,
        customer_bp,
        tokens_bp,
        api_bp,
        payments_api_bp,
        webhooks_bp,
        recoveries_api_bp,
        imports_api_bp,
        openapi_bp,
        api_reference_bp,
        twilio_bp,
        organizations_bp,
        account_bp,
        audit_log_bp,
        staffmail_bp,
        rules_bp,
        review_bp,
        campaigns_bp,
        campaigns_api_bp,
        rules_api_bp,
    ):
        app.register_blueprint(bp)


def register_template_helpers(app: Flask) -> None:
    from recovery import templating

    templating.init_app(app)


def register_error_handlers(app: Flask) -> None:
    from recovery import errors

    errors.init_app(app)


def register_commands(app: Flask) -> None:
    from recovery import cli

    cli.init_app(app)
