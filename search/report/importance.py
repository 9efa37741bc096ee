"""Which sampled choices decided each objective: Optuna's parameter importance per objective."""

from __future__ import annotations

import warnings
from typing import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..study import attrs

MIN_TRIALS = 8  # fewer complete trials give importances that are noise


def param_importances(trials: Sequence[FrozenTrial]) -> dict[str, dict[str, float]]:
    """{objective name: {parameter: importance}} over the complete non-repeat trials
    (fANOVA, Optuna's default evaluator; each objective's importances sum to 1), or {}
    below MIN_TRIALS."""
    complete = [
        t for t in trials
        if t.state == TrialState.COMPLETE and t.values is not None and attrs.REPEAT_OF not in t.user_attrs
    ]
    if len(complete) < MIN_TRIALS:
        return {}
    study = optuna.create_study(directions=list(attrs.DIRECTIONS))
    study.add_trials(complete)
    result = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks the function experimental
        for i, name in enumerate(attrs.METRIC_NAMES):
            result[name] = dict(optuna.importance.get_param_importances(
                study, target=lambda t, i=i: t.values[i],
                evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
            ))
    return result
