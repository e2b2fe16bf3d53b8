"""What the rules decided for one transaction, as the start, the attempt and the timeline record it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    """The rule that matched and what it says to do (`recovery.models.RuleAction`).

    `sentence` is the timeline's words: which rule matched and why, e.g.
    'Rule "Card may work again: retry it" matched: the decline category is
    "Card may work again" (insufficient_funds).'
    """

    action: str
    rule_id: int | None
    rule_name: str | None
    rule_version: int | None
    campaign_id: int | None
    # do_not_recover / hold_for_review: the reason shown on the transaction.
    reason: str | None
    sentence: str

    @classmethod
    def chosen(cls, campaign_id: int, sentence: str) -> Decision:
        """A person's choice of campaign instead of the rules' (no rule matched anything)."""
        return cls(
            action="start_campaign",
            rule_id=None,
            rule_name=None,
            rule_version=None,
            campaign_id=campaign_id,
            reason=None,
            sentence=sentence,
        )
