"""How the SSL stages share a run's time: pretraining first, then the teacher, then the students."""

from __future__ import annotations

import time

from ..plan import Plan, SSLParams


def ssl_active(ssl: SSLParams) -> bool:
    """Whether a plan learns from unlabeled images at all."""
    return ssl.pretrain != "none" or ssl.noisy_student_rounds > 0


def teacher_deadline(plan: Plan, deadline: float | None, pretrain_s: float = 0.0) -> float | None:
    """When the supervised (teacher) training must end: its share of the time left after
    ``pretrain_s`` more seconds of pretraining; the rest is the students'."""
    if deadline is None:
        return None
    now = time.perf_counter()
    share = plan.ssl.teacher_share if plan.ssl.noisy_student_rounds else 1.0
    return now + share * max(deadline - now - pretrain_s, 0.0)


def pretrain_seconds(plan: Plan) -> float:
    """The pretraining time planned by ``choose_ssl`` (0 without pretraining)."""
    return float(plan.measurements.get("ssl_choice", {}).get("pretrain_s", 0.0)) if plan.ssl.pretrain != "none" else 0.0
