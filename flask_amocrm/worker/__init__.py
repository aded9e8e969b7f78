"""The RQ side: the queue, the jobs, the worker, planning and delivering events."""

from __future__ import annotations

from .amo_worker import AmoWorker
from .job_class import AppJob

__all__ = ["AmoWorker", "AppJob"]
