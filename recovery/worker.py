"""The RQ workers `flask worker` runs: RQ's own, plus a re-arming of our periodic jobs."""

from __future__ import annotations

from redis.exceptions import RedisError
from rq import SimpleWorker, Worker
from rq.worker import BaseWorker

from recovery.logs import get_logger

log = get_logger("recovery.worker")


def arm_periodic_jobs(queue_name: str) -> None:
    """Place the sweepers and the reconciliation unless they are waiting already.

    Safe to call from every worker, at start and at every maintenance round
    (RQ's, every 10 minutes): each job has a fixed id. After Redis loses its
    data they are back within one round instead of at the next deploy.
    """
    from recovery.queue import get_queue
    from recovery.recoveries.jobs import keep_sweeper_armed
    from recovery.webhooks.jobs import schedule_periodic

    schedule_periodic(get_queue(queue_name))  # the webhook sweeper and the reconciliation
    try:
        keep_sweeper_armed()
    except RedisError as error:
        log.warning("recovery_sweeper_arm_failed", error=str(error))


class _ArmsPeriodicJobs(BaseWorker):
    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()  # type: ignore[no-untyped-call]  # RQ leaves it unannotated
        arm_periodic_jobs(self.queues[0].name)


class ArmingWorker(_ArmsPeriodicJobs, Worker):
    """RQ's forking worker, re-arming the periodic jobs at each maintenance round."""


class ArmingSimpleWorker(_ArmsPeriodicJobs, SimpleWorker):
    """RQ's in-process worker, re-arming the periodic jobs at each maintenance round."""


def worker_class(*, fork: bool, arming: bool) -> type[BaseWorker]:
    if arming:
        return ArmingWorker if fork else ArmingSimpleWorker
    return Worker if fork else SimpleWorker
