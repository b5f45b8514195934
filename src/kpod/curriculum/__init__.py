"""Curriculum: KPOD's progressive schedule (Eqs. 9-13) and the FTGP selection it runs at every stage.

    from kpod.curriculum import compute_schedule, StepDifficulties
    schedule = compute_schedule(step_values, n_steps, clusters, num_stages=20)
    schedule.given_steps[t]   # (num_questions,) leading steps given as input at stage t

The generic oracle version lives in `kpod.curriculum.ftgp.ftgp` (not re-exported here, so that the name
`kpod.curriculum.ftgp` stays the module).
"""

from kpod.curriculum.ftgp import (
    FtgpResult,
    KpodSelection,
    ftgp_select,
    ftgp_select_detailed,
    kpod_gain_oracle,
    kpod_objective,
    max_num_thresholds,
    query_bound,
    set_cost,
)
from kpod.curriculum.greedy import greedy_select, greedy_select_detailed
from kpod.curriculum.schedule import (
    Schedule,
    StepDifficulties,
    advance_stage,
    compute_schedule,
    default_full_difficulty_stage,
    difficulty_target,
    growth_rate,
    initial_given_steps,
    stage_budget,
)

__all__ = [
    "FtgpResult",
    "KpodSelection",
    "Schedule",
    "StepDifficulties",
    "advance_stage",
    "compute_schedule",
    "default_full_difficulty_stage",
    "difficulty_target",
    "ftgp_select",
    "ftgp_select_detailed",
    "greedy_select",
    "greedy_select_detailed",
    "growth_rate",
    "initial_given_steps",
    "kpod_gain_oracle",
    "kpod_objective",
    "max_num_thresholds",
    "query_bound",
    "set_cost",
    "stage_budget",
]
