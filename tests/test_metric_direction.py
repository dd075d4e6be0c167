"""One rule for "is this metric better lower or higher", shared by early stopping / best weights and tuning."""

import pytest

from tfsft.config import EarlyStoppingConfig, TuneConfig
from tfsft.metric_direction import metric_direction, resolve_direction


@pytest.mark.parametrize(
    "name",
    [
        "loss",
        "val_loss",
        "mae",
        "val_mae",
        "mse",
        "val_mse",
        "rmse",
        "val_rmse",
        "mean_absolute_error",
        "val_root_mean_squared_error",
        "categorical_crossentropy",
        "val_f1_loss",
        "val_top_k",
    ],
)
def test_lower_is_better(name):
    assert metric_direction(name) == "min"


@pytest.mark.parametrize(
    "name",
    [
        "accuracy",
        "val_accuracy",
        "acc",
        "val_categorical_accuracy",
        "f1",
        "val_macro_f1",
        "f1_score",
        "auc",
        "val_auc",
        "val_auc_1",
        "r2",
        "val_r2",
        "r2_score",
        "precision",
        "val_precision",
        "recall",
        "val_recall",
        "val_Accuracy",
    ],
)
def test_higher_is_better(name):
    assert metric_direction(name) == "max"


def test_an_explicit_setting_wins_over_the_name():
    assert resolve_direction("val_loss", "max") == "max"
    assert resolve_direction("val_accuracy", "min") == "min"
    assert resolve_direction("val_r2", "auto") == "max"


@pytest.mark.parametrize("metric", ["val_r2", "val_rmse", "val_macro_f1", "val_loss", "val_auc"])
def test_early_stopping_and_tuning_agree(tmp_path, metric):
    from tfsft.callbacks import MonitoredMetric

    monitored = MonitoredMetric.from_config(EarlyStoppingConfig(monitor=metric), has_validation=True)
    tune = TuneConfig(objective=metric, space={"optimizer.learning_rate": {"type": "float", "min": 1e-4, "max": 1e-2}})
    assert monitored.mode == tune.objective_direction() == metric_direction(metric)
