"""Spearman's ρ of `experiments/reward_agreement.py` on hand-worked ranks (ties share their mean rank)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from reward_agreement import main, rankdata, spearman


def test_ranks_share_ties():
    assert rankdata(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [2.5, 0.0, 2.5, 1.0]


def test_spearman_on_hand_worked_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == 1.0
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # ranks (0, 1.5, 1.5, 3) and (0, 2, 1, 3): covariance 4.5 / √(4.5 · 5)
    assert math.isclose(spearman([1, 2, 2, 3], [1, 3, 2, 4]), 4.5 / math.sqrt(4.5 * 5))
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))  # no spread: undefined


def test_bad_seed_count_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--seeds", "0"])
    assert e.value.code == 2
    assert "--seeds must be positive" in capsys.readouterr().err
