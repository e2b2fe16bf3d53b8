"""Where Stripe sends the customer back to: our customer pages under BASE_URL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer

LINK_SALT = "recovery.payment-link-success"


@dataclass(frozen=True)
class PaymentPages:
    """The success and cancel URLs of a session or link."""

    base_url: str
    # The recovery attempt's link token, for sessions opened from the customer
    # pay page: the success page then shows only that attempt's session, and the
    # cancel page can offer to try again.
    token: str | None = None
    # For a Payment Link, its transaction signed (see link_pages): Stripe makes the
    # link's sessions, so we hold no record of them, and the success page asks
    # Stripe only about sessions that a link of ours sent back.
    link: str | None = None

    @property
    def success_url(self) -> str:
        # Stripe fills in {CHECKOUT_SESSION_ID}; the page only shows it, fulfilment is the webhook's.
        url = f"{self.base_url.rstrip('/')}/pay/success?session_id={{CHECKOUT_SESSION_ID}}"
        if self.token:
            return f"{url}&t={self.token}"
        return f"{url}&l={self.link}" if self.link else url

    @property
    def cancel_url(self) -> str:
        url = f"{self.base_url.rstrip('/')}/pay/cancel"
        return f"{url}?t={self.token}" if self.token else url


def link_pages(base_url: str, secret_key: str, transaction_id: int) -> PaymentPages:
    """The pages for a transaction's Payment Link, its success page able to tell whose it is."""
    return PaymentPages(base_url, link=URLSafeSerializer(secret_key, salt=LINK_SALT).dumps(transaction_id))


def transaction_of_link(secret_keys: Sequence[str], signed: str) -> int | None:
    """The transaction a Payment Link's success URL names, if we signed it with one of the keys.

    Links live at Stripe for good: `secret_keys` is the current key with the
    ones it replaced (oldest first), so a rotation leaves their pages working.
    """
    try:
        value = URLSafeSerializer(list(secret_keys), salt=LINK_SALT).loads(signed)
    except BadSignature:
        return None
    return value if type(value) is int else None
