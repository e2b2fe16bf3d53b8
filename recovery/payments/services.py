"""Temporary: what recovery/recoveries still imports from here, until it imports them where they live."""

from recovery.payments.checkout import CHECKOUT_MIN_LIFETIME as CHECKOUT_MIN_LIFETIME
from recovery.payments.checkout import CheckoutRequest as CheckoutRequest
from recovery.payments.checkout import create_checkout_session as create_checkout_session
from recovery.payments.pages import PaymentPages as PaymentPages
from recovery.payments.rules import PaymentRefused as PaymentRefused
