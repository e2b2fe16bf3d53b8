"""Every table of the domain (SPEC.md), importable from one place."""

from recovery.models.api_token import ApiToken
from recovery.models.audit_event import AuditEvent
from recovery.models.base import Base, DbSession, IllegalTransition, utcnow
from recovery.models.bulk_start import BulkStart, BulkStatus
from recovery.models.campaign import Campaign, CampaignEnd, CampaignVersion, StepAction
from recovery.models.card_retry import CardRetry, RetryStatus
from recovery.models.checkout_session import CheckoutSession, CheckoutStatus
from recovery.models.contact_suppression import ContactSuppression, SuppressionReason
from recovery.models.csv_import import CsvImport, ImportStatus
from recovery.models.import_mapping import ImportMapping
from recovery.models.message import Message, MessageStatus, Provider
from recovery.models.organization import Organization
from recovery.models.payment_fulfilment import PaymentFulfilment
from recovery.models.recovery_attempt import AttemptStatus, Channel, RecoveryAttempt
from recovery.models.recovery_rule import RecoveryRule, RuleAction
from recovery.models.staff_email import StaffEmail, StaffEmailKind, StaffEmailStatus
from recovery.models.stripe_customer import StripeCustomer
from recovery.models.transaction import Transaction, TransactionSource, TransactionStatus
from recovery.models.user import Role, User
from recovery.models.user_login import UserLogin
from recovery.models.webhook_event import WebhookEvent, WebhookState

__all__ = [
    "ApiToken",
    "AttemptStatus",
    "AuditEvent",
    "Base",
    "BulkStart",
    "BulkStatus",
    "Campaign",
    "CampaignEnd",
    "CampaignVersion",
    "CardRetry",
    "Channel",
    "CheckoutSession",
    "CheckoutStatus",
    "ContactSuppression",
    "CsvImport",
    "DbSession",
    "IllegalTransition",
    "ImportMapping",
    "ImportStatus",
    "Message",
    "MessageStatus",
    "Organization",
    "PaymentFulfilment",
    "Provider",
    "RecoveryAttempt",
    "RecoveryRule",
    "RetryStatus",
    "Role",
    "RuleAction",
    "StaffEmail",
    "StaffEmailKind",
    "StaffEmailStatus",
    "StepAction",
    "StripeCustomer",
    "SuppressionReason",
    "Transaction",
    "TransactionSource",
    "TransactionStatus",
    "User",
    "UserLogin",
    "WebhookEvent",
    "WebhookState",
    "utcnow",
]
