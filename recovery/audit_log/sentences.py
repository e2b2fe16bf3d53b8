"""Each audit action code as a sentence a merchant reads ("changed the role of ann@… to admin").

Placeholders name keys of the event's details; an event without them gets
the sentence's plain form. An action not listed reads as its code, spaced.
"""

from __future__ import annotations

from typing import Any

from recovery.transactions.timeline import AUDIT_TITLES

# code: (kind, sentence with {detail} placeholders, sentence without details)
ACTIONS: dict[str, tuple[str, str, str]] = {
    "user.signed_in": ("sign_ins", "signed in", "signed in"),
    "user.signed_out": ("sign_ins", "signed out", "signed out"),
    "user.signed_out_everywhere": (
        "sign_ins",
        "signed out on every device ({sessions} sessions)",
        "signed out on every device",
    ),
    "user.sign_in_refused_deactivated": (
        "sign_ins",
        "tried to sign in to a deactivated account (right password)",
        "tried to sign in to a deactivated account",
    ),
    "user.password_reset_requested": (
        "sign_ins",
        "asked for a password reset link",
        "asked for a password reset link",
    ),
    "user.password_reset": ("sign_ins", "set a new password through a reset link", "reset their password"),
    "user.password_changed": ("users", "changed their password", "changed their password"),
    "user.name_changed": ("users", "changed their name from “{old}” to “{new}”", "changed their name"),
    "user.invited": ("users", "invited {email} as {role}", "invited a user"),
    "user.invitation_resent": ("users", "sent the invitation to {email} again", "sent an invitation again"),
    "user.invitation_revoked": ("users", "withdrew the invitation to {email}", "withdrew an invitation"),
    "user.invitation_accepted": (
        "users",
        "accepted the invitation and set a password",
        "accepted the invitation",
    ),
    "user.role_changed": (
        "users",
        "changed the role of {email} from {old} to {new}",
        "changed a user's role",
    ),
    "user.deactivated": ("users", "deactivated {email}", "deactivated a user"),
    "user.reactivated": ("users", "reactivated {email}", "reactivated a user"),
    "api_token_created": ("tokens", "created an API token", "created an API token"),
    "api_token_revoked": ("tokens", "revoked an API token", "revoked an API token"),
    "organization.recovery_settings_changed": (
        "settings",
        "changed the recovery settings",
        "changed the recovery settings",
    ),
    "organization.stripe_settings_changed": (
        "settings",
        "changed the Stripe settings",
        "changed the Stripe settings",
    ),
    "organization.stripe_account_linked": (
        "settings",
        "connected a Stripe account",
        "connected a Stripe account",
    ),
    "organization.stripe_account_unlinked": (
        "settings",
        "disconnected the Stripe account",
        "disconnected the Stripe account",
    ),
    "webhook.replayed": ("settings", "processed a Stripe event again", "processed a Stripe event again"),
    "webhook.reconcile_requested": (
        "settings",
        "asked to check open payments with Stripe",
        "asked to check open payments with Stripe",
    ),
    "recovery.started": ("recoveries", "started a recovery", "started a recovery"),
    "recovery.cancelled": ("recoveries", "cancelled a recovery", "cancelled a recovery"),
    "recovery.bulk_started": ("recoveries", "started recoveries in bulk", "started recoveries in bulk"),
    "recovery.bulk_resumed": ("recoveries", "resumed a bulk start", "resumed a bulk start"),
    "recovery.auto_start_refused": (
        "recoveries",
        "did not start a recovery automatically",
        "did not start a recovery automatically",
    ),
    "recovery.message_resent": ("recoveries", "sent a message again", "sent a message again"),
    "recovery.message_found": (
        "recoveries",
        "found a text message at Twilio",
        "found a text message at Twilio",
    ),
    "recovery.sending_stopped": ("recoveries", "stopped sending messages", "stopped sending messages"),
    "recovery.link_opened": (
        "recoveries",
        "customer opened the payment link",
        "customer opened the payment link",
    ),
    "recovery.unsubscribed": (
        "recoveries",
        "customer unsubscribed from emails",
        "customer unsubscribed from emails",
    ),
    "recovery.sms_opted_out": (
        "recoveries",
        "customer replied STOP to texts",
        "customer replied STOP to texts",
    ),
    "recovery.sms_opted_in": (
        "recoveries",
        "customer replied START to texts",
        "customer replied START to texts",
    ),
    "recovery.sms_undelivered": (
        "recoveries",
        "a text message was not delivered",
        "a text message was not delivered",
    ),
    "recovery.not_recovered_by_rule": (
        "recoveries",
        "did not recover a transaction: rule “{rule_name}” says so",
        "did not recover a transaction, as a rule says",
    ),
    "recovery.staff_alerted": ("recoveries", "alerted staff about a transaction", "alerted staff"),
    "recovery.card_retry_queued": ("recoveries", "queued a card retry", "queued a card retry"),
    "recovery.skipped_to_message": (
        "recoveries",
        "passed the card retries for a message (the bank asks for authentication)",
        "passed the card retries for a message",
    ),
    "card_retry.succeeded": ("recoveries", "retried a saved card: paid", "retried a saved card: paid"),
    "card_retry.declined": ("recoveries", "retried a saved card: declined", "retried a saved card: declined"),
    "card_retry.skipped": ("recoveries", "skipped a card retry", "skipped a card retry"),
    "card_retry.error": ("recoveries", "retried a saved card: Stripe failed", "retried a saved card"),
    "transaction.held_for_review": (
        "review",
        "held a transaction for review: {reason}",
        "held a transaction for review",
    ),
    "transaction.review_approved": (
        "review",
        "approved a held transaction: campaign “{campaign_name}” started",
        "approved a held transaction",
    ),
    "transaction.review_dismissed": (
        "review",
        "dismissed a held transaction: {reason}",
        "dismissed a held transaction",
    ),
    "rule.created": ("rules", "added the recovery rule “{name}”", "added a recovery rule"),
    "rule.updated": (
        "rules",
        "changed the recovery rule “{name}” (now version {version})",
        "changed a recovery rule",
    ),
    "rule.deleted": ("rules", "deleted the recovery rule “{name}”", "deleted a recovery rule"),
    "rule.reordered": ("rules", "reordered the recovery rules", "reordered the recovery rules"),
    "campaign.created": ("rules", "created the campaign “{name}”", "created a campaign"),
    "campaign.changed": (
        "rules",
        "changed the campaign “{name}” (now version {version})",
        "changed a campaign",
    ),
    "campaign.archived": ("rules", "archived the campaign “{name}”", "archived a campaign"),
    "import.created": ("imports", "imported a CSV file", "imported a CSV file"),
    "import.mapped": ("imports", "chose the columns of a CSV import", "chose the columns of a CSV import"),
    "import.restarted": ("imports", "restarted a CSV import", "restarted a CSV import"),
    "audit.exported": ("exports", "exported the audit log to CSV", "exported the audit log to CSV"),
    "transaction.created": ("transactions", "added a transaction", "added a transaction"),
    "transaction.contact_updated": (
        "transactions",
        "changed a customer's contact details",
        "changed a customer's contact details",
    ),
    "transaction.closed": ("transactions", "closed a transaction", "closed a transaction"),
    "transaction.reopened": ("transactions", "reopened a transaction", "reopened a transaction"),
}

# The kinds the page filters by, in menu order. An action's kind also follows
# from its prefix (below), so a new action lands in the right filter unlisted.
KINDS: dict[str, str] = {
    "sign_ins": "Sign-ins and passwords",
    "users": "Users and invitations",
    "tokens": "API tokens",
    "settings": "Settings",
    "recoveries": "Recoveries",
    "review": "Review queue",
    "rules": "Rules and campaigns",
    "imports": "Imports",
    "exports": "Exports",
    "transactions": "Transactions",
    "payments": "Payments (Stripe)",
}
_PREFIX_KINDS = {
    "user.": "users",
    "api_token": "tokens",
    "organization.": "settings",
    "webhook.": "settings",
    "recovery.": "recoveries",
    "card_retry.": "recoveries",
    "rule.": "rules",
    "campaign.": "rules",
    "import.": "imports",
    "export": "exports",
    "transaction.": "transactions",
    "stripe.": "payments",
}


def kind_of(action: str) -> str | None:
    if action in ACTIONS:
        return ACTIONS[action][0]
    return next((kind for prefix, kind in _PREFIX_KINDS.items() if action.startswith(prefix)), None)


def actions_of_kind(kind: str) -> tuple[list[str], list[str], list[str]]:
    """(codes listed as `kind`, its code prefixes, codes those prefixes match that are of another kind)."""
    exact = [code for code, (k, _, _) in ACTIONS.items() if k == kind]
    prefixes = [prefix for prefix, k in _PREFIX_KINDS.items() if k == kind]
    others = [code for code, (k, _, _) in ACTIONS.items() if k != kind and code.startswith(tuple(prefixes))]
    return exact, prefixes, others


def sentence(action: str, details: dict[str, Any] | None) -> str:
    """What happened, in words; the code itself (spaced) for an action nobody described yet."""
    entry = ACTIONS.get(action)
    if entry is None and action.startswith("export."):  # one code per list (recovery/exports)
        rows = (details or {}).get("rows")
        what = action.removeprefix("export.").replace("_", " ")
        return f"exported {what} to CSV" + (f" ({rows} rows)" if isinstance(rows, int) else "")
    if entry is None:
        title = AUDIT_TITLES.get(action)  # the transaction timeline's words (Stripe's events)
        return title[0].lower() + title[1:] if title else action.replace(".", ": ").replace("_", " ")
    _, with_details, plain = entry
    try:
        return with_details.format_map({k: str(v) for k, v in (details or {}).items()})
    except (KeyError, ValueError, IndexError):
        return plain
