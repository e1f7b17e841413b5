"""Architecture search without optuna installed: one clear error naming the extra to install (it once raised a
TypeError from building that error)."""

import sys

import numpy as np
import pytest

from slimforge.errors import MissingDependencyError


def test_search_without_optuna_names_the_extra(monkeypatch):
    from slimforge.nas.search import Constraints, search_mobilenet

    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    x, y = np.zeros((4, 1, 8, 8), np.float32), np.zeros(4, np.int64)
    with pytest.raises(MissingDependencyError) as err:
        search_mobilenet(x, y, x, y, constraints=Constraints(max_latency_ms=1.0))
    assert "'optuna'" in str(err.value) and "pip install 'slimforge[nas]'" in str(err.value)
