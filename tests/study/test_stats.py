import math

import numpy as np
import pytest

from mlic.study.stats import paired_difference, summarize


def test_paired_interval_by_hand():
    # differences 2, 4, 0, 6: mean 3, sample sd sqrt(20/3), t_{0.975, 3} = 3.182446305284263
    arm = [72.0, 75.0, 70.0, 80.0]
    base = [70.0, 71.0, 70.0, 74.0]
    d = paired_difference(arm, base)
    sd = math.sqrt(20 / 3)
    half = 3.182446305284263 * sd / 2
    assert d.n == 4 and d.wins == 3
    assert d.mean == pytest.approx(3.0)
    assert d.sd == pytest.approx(sd)
    assert (d.low, d.high) == (pytest.approx(3 - half), pytest.approx(3 + half))
    assert not d.excludes_zero  # 3 - 4.11 < 0


def test_paired_interval_excludes_zero_and_differs_from_unpaired():
    base = np.array([60.0, 70.0, 80.0, 65.0, 75.0])
    arm = base + np.array([1.0, 1.2, 0.8, 1.1, 0.9])
    d = paired_difference(arm, base)
    assert d.excludes_zero and d.low > 0
    # the arms' own spread (about 8) is far wider than the paired interval
    assert summarize(arm).sd > 5 * (d.high - d.low)


def test_one_seed_has_no_interval_and_bad_input_is_refused():
    d = paired_difference([1.0], [0.5])
    assert d.mean == 0.5 and math.isnan(d.low) and not d.excludes_zero
    assert math.isnan(summarize([3.0]).sd)
    with pytest.raises(ValueError):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        summarize([])


def test_p_value_equivalence_bound_and_holm_against_scipy_and_hand_values():
    import math

    from scipy import stats as sst

    from mlic.study.stats import equivalence_bound, holm, paired_p_value

    arm, base = [3.0, 1.0, 2.5, 0.5, 2.0], [1.0, 1.5, 1.0, 0.0, 0.5]
    assert paired_p_value(arm, base) == pytest.approx(sst.ttest_rel(arm, base).pvalue, rel=1e-12)
    d = [a - b for a, b in zip(arm, base)]
    mean, se = sum(d) / 5, (sum((x - sum(d) / 5) ** 2 for x in d) / 4) ** 0.5 / 5 ** 0.5
    # TOST at 5 %: both one-sided tests reject at margin m exactly when the 90 % interval is inside (-m, m)
    m = equivalence_bound(arm, base)
    assert m == pytest.approx(abs(mean) + sst.t.ppf(0.95, 4) * se)
    for margin, inside in ((m * 1.001, True), (m * 0.999, False)):
        p_low = sst.t.sf((mean + margin) / se, 4)   # H0: diff <= -margin
        p_high = sst.t.cdf((mean - margin) / se, 4)  # H0: diff >= +margin
        assert (max(p_low, p_high) < 0.05) == inside
    # Holm by hand: sorted 0.01, 0.02, 0.04 over 3 tests -> 0.03, 0.04, 0.04
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, math.nan, 0.01])[0] == pytest.approx(0.5) and math.isnan(holm([0.5, math.nan, 0.01])[1])
    assert math.isnan(paired_p_value([1.0], [0.0])) and math.isnan(paired_p_value([1.0, 2.0], [0.0, 1.0]))
