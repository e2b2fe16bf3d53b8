"""The password-reset email, written and sent by a worker.

The page only enqueues this job, whether or not the address has an account:
its answer and its timing are the same either way.
"""

from __future__ import annotations

from flask import current_app

from recovery.auth.reset import Signer, request_reset
from recovery.extensions import db, mail
from recovery.jobs import app_job
from recovery.logs import get_logger
from recovery.messaging.providers import MessagingSettings, Postman
from recovery.staffmail import services as staffmail

log = get_logger("recovery.auth")


@app_job
def send_password_reset(email_address: str, ip_address: str | None) -> bool:
    """Send the reset email if the address has an account that may reset; return whether one went."""
    config = current_app.config
    email = request_reset(
        db.session, Signer.from_config(config), email_address, config["BASE_URL"], ip_address
    )
    if email is None:
        db.session.rollback()
        log.info("password_reset_not_sent", reason="no_account_that_may_reset")
        return False
    # Named commit before the provider call: the request and its audit entry stay true if sending fails.
    db.session.commit()
    postman = Postman(MessagingSettings.from_config(config), mail)
    result = staffmail.send(postman, email, "Recovery")
    db.session.commit()
    return result.sent
