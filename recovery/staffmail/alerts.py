"""The staff alert of a campaign's `notify_staff` step: an email naming the transaction, with a link to it.

Written (stored as queued StaffEmail rows) in the send job's transaction and
sent by `staffmail.jobs.send_staff_emails` once that commits.
"""

from __future__ import annotations

from sqlalchemy import select

from recovery import queue
from recovery.declines import category_label, describe
from recovery.models import Organization, Role, StaffEmail, StaffEmailStatus, Transaction, User
from recovery.models.base import DbSession
from recovery.money import format_amount
from recovery.unit_of_work import on_commit

# StaffEmail.kind of an alert (the other kinds: recovery.models.StaffEmailKind).
STAFF_ALERT = "staff_alert"
SEND_STAFF_EMAILS = "recovery.staffmail.jobs.send_staff_emails"


def recipients(session: DbSession, organization: Organization) -> list[tuple[str, int | None]]:
    """(address, user id) of whom an alert goes to: the configured address, else the owners and admins."""
    if organization.staff_alert_email:
        return [(organization.staff_alert_email, None)]
    users = session.scalars(
        select(User)
        .where(
            User.organization_id == organization.id,
            User.role.in_([Role.OWNER.value, Role.ADMIN.value]),
            User.is_active.is_(True),
            User.password_hash.is_not(None),  # an invitation not yet accepted is nobody's inbox
        )
        .order_by(User.id)
    )
    return [(user.email, user.id) for user in users]


def alert_text(transaction: Transaction, link: str, why: str | None) -> tuple[str, str]:
    """The alert's subject and body."""
    amount = format_amount(transaction.amount, transaction.currency)
    customer = transaction.customer_name or transaction.customer_email or transaction.customer_phone or "-"
    decline = describe(transaction.failure_code)
    reason = transaction.failure_code or "no failure code"
    if decline is not None:
        reason = f"{reason} ({category_label(transaction.decline_category)})"
    lines = [
        f"A failed payment needs your attention: {transaction.transaction_ref}, {amount}.",
        "",
        f"Customer: {customer}",
        f"Amount: {amount}",
        f"Declined: {reason}",
    ]
    if why:
        lines.append(f"Why you are told: {why}")
    lines += ["", f"Open the transaction: {link}"]
    return f"Payment {transaction.transaction_ref} ({amount}) needs attention", "\n".join(lines)


def queue_alert(
    session: DbSession,
    organization: Organization,
    transaction: Transaction,
    *,
    base_url: str,
    why: str | None,
    job_key: str,
) -> list[StaffEmail]:
    """Store the alert for each recipient and send them after the commit; [] if the organization has nobody.

    `job_key` names the sending job (one per attempt step): placed once, however often asked.
    """
    link = f"{base_url.rstrip('/')}/transactions/{transaction.id}"
    subject, text = alert_text(transaction, link, why)
    emails = [
        StaffEmail(
            organization_id=organization.id,
            user_id=user_id,
            kind=STAFF_ALERT,
            recipient=address,
            subject=subject[:300],
            body_text=text,
            status=StaffEmailStatus.QUEUED,
        )
        for address, user_id in recipients(session, organization)
    ]
    if not emails:
        return []
    session.add_all(emails)
    session.flush()
    on_commit(session, place_sending, [email.id for email in emails], job_key)
    return emails


def place_sending(email_ids: list[int], job_key: str) -> bool:
    return queue.enqueue_once(SEND_STAFF_EMAILS, email_ids, job_id=queue.job_id("staff-alert", job_key))
