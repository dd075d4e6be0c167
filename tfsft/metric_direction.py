"""Whether a logged metric is better lower or higher: the one rule early stopping, best weights and tuning share.

TF-free (the config imports it). Names are read as Keras logs them: an optional `val_` prefix, words joined by
underscores, possibly a `_1` suffix Keras adds to a duplicate name (`val_macro_f1`, `val_auc_1`, `r2_score`).
"""

from __future__ import annotations

import re

# Any of these words makes a metric one to minimise; it wins over the words below ("f1_loss" is a loss).
LOWER_IS_BETTER = frozenset(
    {
        "loss",
        "error",
        "mae",
        "mse",
        "rmse",
        "msle",
        "mape",
        "crossentropy",
        "hinge",
        "huber",
        "logcosh",
        "kld",
        "poisson",
    }
)
# Any of these words makes a metric one to maximise.
HIGHER_IS_BETTER = frozenset({"acc", "accuracy", "f1", "fbeta", "auc", "precision", "recall", "r2", "iou"})


def metric_direction(name: str) -> str:
    """ "min" or "max" for a logged metric name. A name with none of the known words counts as a loss ("min"),
    as Keras's own callbacks assume; set the explicit mode/direction for such a metric."""
    words = set(re.split(r"[^a-z0-9]+", name.lower()))
    if words & LOWER_IS_BETTER:
        return "min"
    if words & HIGHER_IS_BETTER:
        return "max"
    return "min"


def resolve_direction(name: str, setting: str) -> str:
    """A config's `auto | min | max` setting for the metric `name`: auto asks `metric_direction`."""
    return metric_direction(name) if setting == "auto" else setting
