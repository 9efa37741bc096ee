"""Parameter importance per objective (search/report/importance.py), on trials whose objectives
each depend on one parameter alone."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import create_trial

from search.report.importance import MIN_TRIALS, param_importances
from search.study import attrs

DISTRIBUTIONS = {"width": FloatDistribution(0.0, 1.0), "quant": CategoricalDistribution(("fp32", "int8")),
                 "noise": FloatDistribution(0.0, 1.0)}


def trials(n: int):
    out = []
    for i in range(n):
        width, quant, noise = (i * 7 % n) / n, ("fp32", "int8")[i % 2], (i * 3 % n) / n
        values = [0.5 + 0.4 * width, 1.0 + 0.01 * noise, 100.0 if quant == "fp32" else 25.0]
        out.append(create_trial(values=values, params={"width": width, "quant": quant, "noise": noise},
                                distributions=DISTRIBUTIONS))
    return out


def test_each_objective_s_importance_goes_to_the_parameter_it_depends_on():
    importances = param_importances(trials(40))
    assert list(importances) == list(attrs.METRIC_NAMES)
    assert max(importances["accuracy"], key=importances["accuracy"].get) == "width"
    assert max(importances["size_kb"], key=importances["size_kb"].get) == "quant"
    for objective in importances.values():
        assert sum(objective.values()) == pytest.approx(1.0)


def test_too_few_trials_give_no_importances():
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    assert param_importances(trials(MIN_TRIALS - 1)) == {}
