"""The RQ job id of a recovery send; no app context, no database.

A send job carries only ids. Its job id names the attempt, the step and the
due time, so the sweeper can tell whether the send the database expects is
already waiting in Redis, and scheduling the same send twice is a no-op.
"""

from __future__ import annotations

from datetime import datetime

from recovery.queue import job_id


def send_job_id(attempt_id: int, step: int, due: datetime) -> str:
    return job_id("recovery-send", attempt_id, step, due)
