"""One pipeline stage as its own flow run, for stages the recipe places on another work pool.

Deployed once per pool as ``stage/<pool>`` (prefect.yaml); ``tasks.stages.dispatch`` starts it.
"""

from __future__ import annotations

from prefect import flow

from posttrain.pipeline import StageRecord
from posttrain.plan import RunPlan
from tasks.stages import run_stage_here


@flow(name="stage", log_prints=True)
def stage(stage: str, plan: RunPlan, upstream: StageRecord | None = None) -> dict:
    """Run ``stage`` of ``plan`` from ``upstream``'s output (or reuse its published output) and
    return its record; the caller reads the output itself from the artifact store."""
    return run_stage_here(stage, plan, upstream).model_dump(mode="json")
