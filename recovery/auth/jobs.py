"""The password-reset email, written and sent by a worker.

The page only enqueues this job, whether or not the address has an account:
its answer and its timing are the same either way.
"""

from __future__ import annotations

from recovery.auth.reset import request_reset
from recovery.auth.settings import staff_settings
from recovery.extensions import db
from recovery.jobs import app_job
from recovery.logs import get_logger
from recovery.messaging.sender import postman
from recovery.staffmail import services as staffmail
from recovery.unit_of_work import commit_now

log = get_logger("recovery.auth")


@app_job
def send_password_reset(email_address: str, ip_address: str | None) -> bool:
    """Send the reset email if the address has an account that may reset; return whether one went."""
    config = staff_settings()
    email = request_reset(db.session, config.signer, email_address, config.base_url, ip_address)
    if email is None:  # nothing was written
        log.info("password_reset_not_sent", reason="no_account_that_may_reset")
        return False
    commit_now(db.session, "the request and its audit entry stay true if sending fails")
    result = staffmail.send(postman(), email, "Recovery")
    return result.sent
