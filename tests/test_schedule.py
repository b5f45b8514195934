"""Tests for KPOD's progressive schedule (kpod.curriculum.schedule): D(t), h_i(t), the stage update, the whole run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from kpod.curriculum import (
    StepDifficulties,
    advance_stage,
    compute_schedule,
    default_full_difficulty_stage,
    difficulty_target,
    ftgp_select,
    growth_rate,
    initial_given_steps,
    stage_budget,
)


def random_steps(seed: int, n: int = 200, max_steps: int = 8):
    rng = np.random.default_rng(seed)
    n_steps = rng.integers(1, max_steps + 1, n)
    values = rng.gamma(1.5, 1.0, int(n_steps.sum()))
    clusters = rng.integers(0, 5, n)
    return values, n_steps, clusters


# ------------------------------------------------------------------------------------------- D(t)


def test_difficulty_curve_endpoints_shape_and_rate():
    total, c0, p, T = 250.0, 75.0, 0.5, 10
    assert difficulty_target(0, total, c0, p, T) == c0
    assert difficulty_target(T, total, c0, p, T) == total
    assert difficulty_target(T + 5, total, c0, p, T) == total
    t = np.arange(T + 1)
    curve = difficulty_target(t, total, c0, p, T)
    assert np.all(np.diff(curve) > 0)
    np.testing.assert_allclose(curve, c0 + (total - c0) * (t / T) ** (p + 1), rtol=1e-12)
    u = growth_rate(total, c0, p, T)  # dD/dt = u t^p (Eq. 10 is its integral)
    h = 1e-6
    slope = (difficulty_target(4 + h, total, c0, p, T) - difficulty_target(4 - h, total, c0, p, T)) / (2 * h)
    assert slope == pytest.approx(u * 4**p, rel=1e-6)
    rng = np.random.default_rng(0)
    for total, frac, p, T in zip(rng.gamma(2, 100, 200), rng.random(200), rng.uniform(0, 2, 200), rng.integers(1, 50, 200)):
        assert difficulty_target(int(T), total, frac * total, p, int(T)) == total  # exactly, not up to rounding
        assert difficulty_target(0, total, frac * total, p, int(T)) == frac * total
    assert stage_budget(10.0, 12.0) == 0.0 and stage_budget(12.0, 10.0) == 2.0
    assert default_full_difficulty_stage(20) == 10 and default_full_difficulty_stage(1) == 1


# ------------------------------------------------------------------------------------------- h_i and Delta_H_i


def test_remaining_and_reveal_cost_match_naive_sums():
    values, n_steps, _ = random_steps(0, n=60)
    steps = StepDifficulties.from_flat(values, n_steps)
    rng = np.random.default_rng(1)
    given = rng.integers(0, n_steps + 1)
    per_question = np.split(values, np.cumsum(n_steps)[:-1])
    for delta_s in (1, 2, 3):
        want_h = [d[c:].sum() for d, c in zip(per_question, given)]
        want_cost = [d[max(c - delta_s, 0) : c].sum() for d, c in zip(per_question, given)]
        np.testing.assert_allclose(steps.remaining(given), want_h, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(steps.reveal_cost(given, delta_s), want_cost, rtol=1e-12, atol=1e-12)
    assert steps.total() == pytest.approx(values.sum())
    assert initial_given_steps([3, 1, 0]).tolist() == [2, 0, 0]
    same = StepDifficulties.from_lists(per_question)
    np.testing.assert_array_equal(same.values, steps.values)
    np.testing.assert_array_equal(same.n_steps, steps.n_steps)


def test_step_difficulties_validation():
    with pytest.raises(ValueError, match="sum"):
        StepDifficulties.from_flat([1.0, 2.0], [3])
    with pytest.raises(ValueError, match=">= 0"):
        StepDifficulties.from_flat([1.0, -2.0], [2])
    with pytest.raises(ValueError, match="finite"):
        StepDifficulties.from_flat([1.0, float("nan")], [2])
    with pytest.raises(ValueError, match="n_steps"):
        StepDifficulties.from_flat([1.0], [-1, 2])
    empty_rationale = StepDifficulties.from_lists([[1.0, 2.0], []])
    assert empty_rationale.remaining(np.array([1, 0])).tolist() == [2.0, 0.0]


# ------------------------------------------------------------------------------------------- one stage


def test_stage_update_runs_ftgp_on_the_candidates():
    values, n_steps, clusters = random_steps(2)
    steps = StepDifficulties.from_flat(values, n_steps)
    given = initial_given_steps(n_steps)
    target = math.fsum(steps.remaining(given).tolist()) + 40.0
    new_given, record = advance_stage(steps, given, clusters, target, beta=12.0, eps=0.1, seed=3)
    active = np.flatnonzero(given > 0)
    cost = steps.reveal_cost(given, 1)
    expected = ftgp_select(cost[active], clusters[active], 40.0, 12.0, 0.1, 3, zero_cost="include")
    np.testing.assert_array_equal(new_given[active] < given[active], expected)
    assert np.all(new_given[given == 0] == 0)
    assert record["budget"] == pytest.approx(40.0)
    assert record["difficulty_increase"] <= record["budget"]
    assert record["realised_difficulty"] <= target * (1 + 1e-12)
    assert sum(record["selected_per_cluster"]) == record["num_selected"] == int(expected.sum())
    assert record["num_too_costly"] == int(np.count_nonzero(cost[active] > 40.0))
    diversity = 12.0 * sum(math.sqrt(m) for m in record["selected_per_cluster"])
    assert record["objective_F_prime"] == pytest.approx(record["difficulty_increase"] + diversity)
    assert record["objective_F"] == pytest.approx(record["objective_F_prime"] - record["budget"])


def test_stage_with_no_budget_or_zero_difficulty_steps():
    steps = StepDifficulties.from_lists([[1.0, 0.0, 2.0], [3.0, 4.0], [5.0]])
    given = initial_given_steps(steps.n_steps)  # [2, 1, 0]
    h0 = math.fsum(steps.remaining(given).tolist())
    same, record = advance_stage(steps, given, np.array([0, 1, 0]), h0 - 1.0)
    assert same.tolist() == given.tolist() and record["budget"] == 0.0 and record["budget_clamped"]
    # question 0 reveals a step of difficulty 0: it advances for free even when nothing else fits
    moved, record = advance_stage(steps, given, np.array([0, 1, 0]), h0 + 1.0)
    assert moved.tolist() == [1, 1, 0] and record["num_selected_free"] == 1
    with pytest.raises(ValueError, match="delta_s"):
        advance_stage(steps, given, np.array([0, 1, 0]), h0, delta_s=0)


# ------------------------------------------------------------------------------------------- whole schedule


@pytest.mark.parametrize("delta_s", [1, 2])
def test_schedule_invariants(delta_s):
    values, n_steps, clusters = random_steps(5)
    sched = compute_schedule(values, n_steps, clusters, num_stages=12, delta_s=delta_s, seed=1)
    c, T = sched.given_steps, sched.settings["T"]
    assert c.shape == (12, len(n_steps)) and T == 6
    np.testing.assert_array_equal(c[0], n_steps - 1)
    assert np.all(c[T:] == 0)
    step = c[:-1] - c[1:]
    assert np.all(step >= 0)
    before_t = step[: T - 1]  # transitions into stages 1..T-1 are FTGP stages
    assert np.all((before_t == 0) | (before_t == np.minimum(delta_s, c[: T - 1])))
    assert before_t.any()
    for record in sched.records:
        assert record["realised_difficulty"] <= record["target_difficulty"] * (1 + 1e-9) + 1e-9
        assert record["given_steps_max"] == c[record["stage"]].max()
    assert sched.records[T - 1]["given_steps_mean"] < sched.records[0]["given_steps_mean"]
    for t in range(1, T):
        r = sched.records[t]
        assert r["phase"] == "ftgp"
        assert r["difficulty_increase"] == pytest.approx(r["realised_difficulty"] - r["realised_previous"], abs=1e-9)
        assert r["realised_previous"] == pytest.approx(sched.records[t - 1]["realised_difficulty"])
        assert r["budget"] == pytest.approx(max(0.0, r["target_difficulty"] - r["realised_previous"]))
    json.dumps(sched.to_dict(include_given_steps=True))


def test_schedule_stages_are_the_stage_update_with_seed_plus_t():
    values, n_steps, clusters = random_steps(3)
    sched = compute_schedule(values, n_steps, clusters, num_stages=10, scan_order="permuted", seed=11, eps=0.2)
    steps = StepDifficulties.from_flat(values, n_steps)
    for t in (1, 3):
        target = sched.records[t]["target_difficulty"]
        again, _ = advance_stage(
            steps, sched.given_steps[t - 1], clusters, target, eps=0.2, seed=11 + t, scan_order="permuted"
        )
        np.testing.assert_array_equal(again, sched.given_steps[t])


def test_schedule_d0_and_dT_and_c0_clamp():
    values, n_steps, clusters = random_steps(6)
    total = values.sum()
    sched = compute_schedule(values, n_steps, clusters, num_stages=10, c0_fraction=0.9)
    assert not sched.settings["c0_clamped"]
    assert sched.records[0]["target_difficulty"] == pytest.approx(0.9 * total)
    assert sched.records[5]["target_difficulty"] == sched.settings["total_difficulty"]
    # C0 = 1 % of B is below the difficulty of the last steps alone: start from that sum instead
    low = compute_schedule(values, n_steps, clusters, num_stages=10, c0_fraction=0.01)
    initial = low.settings["initial_difficulty"]
    assert low.settings["c0_clamped"] and initial > 0.01 * total
    assert low.records[0]["target_difficulty"] == initial == low.records[0]["realised_difficulty"]
    assert low.records[5]["target_difficulty"] == low.settings["total_difficulty"]


def test_same_seed_same_schedule_and_ablations():
    values, n_steps, clusters = random_steps(7)
    kwargs = dict(num_stages=8, scan_order="permuted", seed=4)
    a = compute_schedule(values, n_steps, clusters, **kwargs)
    b = compute_schedule(values, n_steps, clusters, **kwargs)
    np.testing.assert_array_equal(a.given_steps, b.given_steps)
    assert json.dumps(a.to_dict()) == json.dumps(b.to_dict())
    flat = compute_schedule(values, n_steps, clusters, num_stages=8, progressive=False)
    assert not flat.given_steps.any() and {r["phase"] for r in flat.records} == {"no_progression"}
    no_div = compute_schedule(values, n_steps, clusters, num_stages=8, beta=0.0)
    assert np.all(no_div.given_steps[4:] == 0)
    for r in no_div.records[1:4]:
        assert r["objective_F_prime"] == pytest.approx(r["difficulty_increase"])


def test_include_policy_lets_finished_questions_be_picked_for_free():
    values, n_steps, clusters = random_steps(8, n=100, max_steps=3)
    sched = compute_schedule(values, n_steps, clusters, num_stages=10, zero_cost="include")
    assert any(r.get("num_selected_free", 0) > 0 for r in sched.records)
    assert np.all(sched.given_steps[5:] == 0)


def test_schedule_argument_checks():
    values, n_steps, clusters = random_steps(9, n=10)
    with pytest.raises(ValueError, match="clusters"):
        compute_schedule(values, n_steps, clusters[:-1], num_stages=4)
    with pytest.raises(ValueError, match="c0_fraction"):
        compute_schedule(values, n_steps, clusters, num_stages=4, c0_fraction=1.5)
    with pytest.raises(ValueError, match="T"):
        compute_schedule(values, n_steps, clusters, num_stages=4, T=0)
    with pytest.raises(ValueError, match="zero_cost"):
        compute_schedule(values, n_steps, clusters, num_stages=4, zero_cost="sometimes")


def test_stage_coverage_warns_when_no_reached_stage_trains_the_whole_rationale(caplog):
    from kpod.curriculum.stages import stage_coverage

    caplog.set_level("WARNING", logger="kpod.curriculum.stages")
    # the default split, 84 steps in 4 stages with T = 2: stages 2 and 3 train whole rationales
    assert stage_coverage(84, 21, [False, False, True, True], "kpod") == {"stages_reached": 4,
                                                                        "whole_target_trained": True}
    assert not caplog.records
    # one epoch in one stage: T = 1 is never reached (c_i(0) = n_i - 1 throughout)
    schedule = compute_schedule(np.ones(6), np.array([3, 2, 1]), np.zeros(3, dtype=int), 1)
    assert schedule.given_steps.tolist() == [[2, 1, 0]]
    assert stage_coverage(40, 40, [False], "kpod")["whole_target_trained"] is False
    assert "trains the whole rationale" in caplog.text
    caplog.clear()
    # 9 steps in 4 stages of ceil(9 / 4) = 3 steps: stage 3, the only whole one (T = 3), is never reached
    assert stage_coverage(9, 3, [False, False, False, True], "kpod") == {"stages_reached": 3,
                                                                       "whole_target_trained": False}
    assert caplog.records
