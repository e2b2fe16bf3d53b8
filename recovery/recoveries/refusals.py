"""Why a recovery cannot be started, changed or sent again as asked."""

from __future__ import annotations

from recovery.refusals import Refused


class RecoveryRefused(Refused):
    """A recovery cannot be started or changed as asked; `field` names the input at fault."""


class AlreadyActive(RecoveryRefused):
    """The transaction already has an active attempt; only one at a time."""

    status = 409

    def __init__(self, attempt_id: int | None) -> None:
        super().__init__(
            "A recovery is already running for this transaction; cancel it before starting another."
        )
        self.attempt_id = attempt_id
