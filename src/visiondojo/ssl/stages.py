"""The SSL stages of a run: whether they run, how they share its time (pretraining first, then
the teacher, then the students), and a check of their settings before any time is spent."""

from __future__ import annotations

import math
import time

from torch import nn

from ..errors import ConfigError
from ..plan import SSL_PRETRAIN, Plan, SSLParams
from .backbone import find_feature_layer

STUDENT_INIT = ("teacher", "scratch")
PSEUDO_LABELS = ("hard", "soft")


def check_ssl(plan: Plan, model: nn.Module) -> None:
    """Clear errors for SSL settings that cannot work, naming the field and what it may be."""
    ssl = plan.ssl
    if ssl.pretrain not in SSL_PRETRAIN:
        raise ConfigError(f"ssl.pretrain = {ssl.pretrain!r}; choose one of {', '.join(SSL_PRETRAIN)}")
    if ssl.student_init not in STUDENT_INIT:
        raise ConfigError(f"ssl.student_init = {ssl.student_init!r}; choose one of {', '.join(STUDENT_INIT)}")
    if ssl.pseudo_labels not in PSEUDO_LABELS:
        raise ConfigError(f"ssl.pseudo_labels = {ssl.pseudo_labels!r}; choose one of {', '.join(PSEUDO_LABELS)}")
    if not 0.0 < ssl.labeled_share <= 1.0:
        raise ConfigError(f"ssl.labeled_share = {ssl.labeled_share} is outside (0, 1]; it is the least share of "
                          "each student batch drawn from the labeled images, e.g. 0.125")
    if ssl.pseudo_threshold is not None and not 0.0 <= ssl.pseudo_threshold <= 1.0:
        raise ConfigError(f"ssl.pseudo_threshold = {ssl.pseudo_threshold} is outside [0, 1]; it is a confidence "
                          "(null: calibrated on validation)")
    if ssl.noisy_student_rounds < 0 or ssl.pretrain_epochs < 0 or ssl.student_epochs < 0:
        raise ConfigError("ssl.noisy_student_rounds, ssl.pretrain_epochs and ssl.student_epochs cannot be negative")
    if ssl.noisy_student_rounds and plan.data.task == "multilabel":
        raise ConfigError("ssl.noisy_student_rounds: Noisy Student makes single-label pseudo-labels; set it to 0 "
                          "for multi-label data")
    if not (ssl.temperature > 0 and math.isfinite(ssl.temperature)):
        raise ConfigError(f"ssl.temperature = {ssl.temperature}; NT-Xent needs a positive temperature such as 0.2")
    if ssl.feature_layer is not None:
        find_feature_layer(model, ssl.feature_layer)  # a ModelError naming close candidates


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
