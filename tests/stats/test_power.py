"""The bootstrap's minimum detectable drop against the z-test formula and against a simulation of the test."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from culnig_ext.stats.power import minimum_detectable_drop
from culnig_ext.stats.bootstrap import paired_bootstrap


def test_mde_tends_to_the_z_test_formula():
    # Continuous paired differences, many items: the bootstrap distribution is close to normal with se = sd/sqrt(n),
    # so the MDE at 80% power, one-sided alpha 0.05, is (z_0.95 + z_0.80) * sd / sqrt(n) = 2.4865 * se.
    rng = np.random.default_rng(1)
    n = 2000
    d = rng.normal(0.0, 0.7, size=n)
    se = d.std(ddof=0) / np.sqrt(n)
    expected = (norm.ppf(0.95) + norm.ppf(0.80)) * se
    got = minimum_detectable_drop(d, np.zeros(n), n_resamples=20000, seed=0)
    assert got == pytest.approx(expected, rel=0.03)
    # 90% power and alpha 0.01 move it as the formula says
    got90 = minimum_detectable_drop(d, np.zeros(n), power=0.9, alpha=0.01, n_resamples=20000, seed=0)
    assert got90 == pytest.approx((norm.ppf(0.99) + norm.ppf(0.90)) * se, rel=0.03)


def test_mde_of_identical_conditions_is_zero_and_bigger_sets_detect_smaller_drops():
    a = np.array([1, 0, 1, 1, 0, 1, 0, 0] * 10, dtype=bool)
    assert minimum_detectable_drop(a, a, n_resamples=500) == 0.0
    rng = np.random.default_rng(0)
    small = minimum_detectable_drop(rng.random(50) < 0.5, rng.random(50) < 0.5, n_resamples=4000)
    large = minimum_detectable_drop(rng.random(800) < 0.5, rng.random(800) < 0.5, n_resamples=4000)
    assert large < small / 2.5  # se shrinks as 1/sqrt(n): 4x at 16x the items, allow sampling noise


def test_a_true_drop_of_the_mde_is_detected_about_80_percent_of_the_time():
    # Simulation: the population of per-item differences is known (0/1 accuracies of two conditions with a
    # shared item effect); compute the MDE on one large pilot sample of n items, then draw 400 fresh data sets of
    # n items whose true mean difference is minus that MDE, and run the real test on each.
    n, sims = 150, 400
    rng = np.random.default_rng(7)

    def draw(shift: float):
        easy = rng.random(n) < 0.5
        p_b = np.where(easy, 0.8, 0.3)
        b = rng.random(n) < p_b
        # A loses `shift` of accuracy on average relative to B, item by item
        a = rng.random(n) < np.clip(p_b - shift, 0, 1)
        return a.astype(float), b.astype(float)

    pilot_a, pilot_b = draw(0.0)
    mde = minimum_detectable_drop(pilot_a, pilot_b, n_resamples=4000, seed=0)
    assert 0.05 < mde < 0.3
    rejected = 0
    for s in range(sims):
        a, b = draw(mde)
        rejected += paired_bootstrap(a, b, n_resamples=1000, seed=s, alternative="less").p_value < 0.05
    rate = rejected / sims
    # 400 simulations: sd of the rate about 0.02; the pilot's own sampling error widens it a little more
    assert 0.70 <= rate <= 0.90, rate


def test_mde_bad_input():
    with pytest.raises(ValueError, match="power must be in"):
        minimum_detectable_drop([1, 0], [0, 1], power=0.01)
    with pytest.raises(ValueError, match="3 items but correct_b has 2"):
        minimum_detectable_drop([1, 0, 1], [0, 1])


def test_mde_is_the_quantile_gap_of_the_centred_resamples_of_its_seed():
    # By the module's definition, with the resamples drawn here: e = d* - d, MDE = q_power(e) - q_alpha(e).
    rng = np.random.default_rng(11)
    a, b = rng.random(40), rng.random((2, 40))  # continuous scores: every resample count moves the quantiles
    d = a.astype(float) - b.astype(float).mean(axis=0)

    def by_hand(n_resamples, seed, power=0.8, alpha=0.05):
        idx = np.random.default_rng(seed).integers(0, d.size, size=(n_resamples, d.size))
        e = d[idx].mean(axis=1) - d.mean()
        high, low = np.quantile(e, [power, alpha])
        return max(0.0, high - low)

    assert minimum_detectable_drop(a, b) == pytest.approx(by_hand(10000, 0), abs=1e-12)  # the defaults
    assert minimum_detectable_drop(a, b, n_resamples=700, seed=5) == pytest.approx(by_hand(700, 5), abs=1e-12)
    assert minimum_detectable_drop(a, b, n_resamples=700, seed=5, power=0.9, alpha=0.1) == pytest.approx(
        by_hand(700, 5, 0.9, 0.1), abs=1e-12)


@pytest.mark.parametrize("alpha,power,message", [
    (0.0, 0.8, "alpha must be in"), (1.0, 0.8, "alpha must be in"), (1.5, 0.8, "alpha must be in"),
    (0.05, 0.05, "power must be in"), (0.05, 1.0, "power must be in"), (0.05, 1.5, "power must be in"),
])
def test_mde_refuses_levels_on_and_beyond_the_bounds(alpha, power, message):
    with pytest.raises(ValueError, match=message):
        minimum_detectable_drop([1, 0, 1], [0, 1, 1], alpha=alpha, power=power)


def test_mde_names_the_argument_that_is_not_numbers():
    with pytest.raises(ValueError, match="^correct_a: expected numbers"):
        minimum_detectable_drop(["x", "y"], [0, 1])
    with pytest.raises(ValueError, match="^correct_b: expected numbers"):
        minimum_detectable_drop([0, 1], ["x", "y"])
