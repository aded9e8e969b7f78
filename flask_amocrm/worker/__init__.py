"""The RQ side: the queue, the jobs, the worker, planning and delivering events."""

from __future__ import annotations

from .job_class import AmoWorker, AppJob

__all__ = ["AmoWorker", "AppJob"]
