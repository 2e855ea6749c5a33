"""Chains the stages. Each stage reads the previous stage's run directory, so each can run alone."""

from quantsweep.stages.common import ProgressFactory, check_device, no_progress
from quantsweep.stages.materialize_stage import materialize_candidates
from quantsweep.stages.schemes_stage import SchemesRequest, make_schemes
from quantsweep.stages.sweep_stage import resume_sweep, sweep

__all__ = [
    "ProgressFactory",
    "SchemesRequest",
    "check_device",
    "make_schemes",
    "materialize_candidates",
    "no_progress",
    "resume_sweep",
    "sweep",
]
