"""Sending staff emails written by another unit of work (a campaign's staff alert)."""

from __future__ import annotations

from recovery.extensions import db
from recovery.jobs import app_job
from recovery.messaging.sender import postman
from recovery.models import StaffEmail, StaffEmailStatus
from recovery.staffmail import services
from recovery.unit_of_work import commit_now


@app_job
def send_staff_emails(email_ids: list[int]) -> int:
    """Send the queued ones among the emails; return how many went.

    Safe to run twice: an email is sent only while queued, and each one's
    outcome is committed before the next is handed to the provider.
    """
    sent = 0
    for email_id in email_ids:
        email = db.session.get(StaffEmail, email_id, with_for_update=True)
        if email is None or email.status != StaffEmailStatus.QUEUED:
            continue
        if services.send(postman(), email, "Recovery").sent:
            sent += 1
        commit_now(db.session, "each email's outcome is kept before the next is sent")
    return sent
