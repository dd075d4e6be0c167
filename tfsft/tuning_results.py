"""What a search leaves behind: HParams logs for TensorBoard, the results table (results.csv / results.md, best
first), best_config.yaml's contents and objective_vs_hparams.png. Written by tfsft.tuning's chief.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tfsft.config import RunConfig, TuneConfig
from tfsft.tuning_space import bounds, choices, config_for_trial, trial_overrides

if TYPE_CHECKING:
    from tfsft.tuning import SearchPaths


# ----------------------------------------------------------------------------------------- TensorBoard
def _hparam_domains(tune: TuneConfig) -> list:
    from tensorboard.plugins.hparams import api as hparams_api

    out = []
    for name, parameter in tune.space.items():
        if parameter.type == "choice":
            given = choices(parameter)
            values = given if len({type(v) for v in given}) == 1 else [str(v) for v in given]
            out.append(hparams_api.HParam(name, hparams_api.Discrete(values)))
        elif parameter.type == "int":
            out.append(hparams_api.HParam(name, hparams_api.IntInterval(*map(int, bounds(parameter)))))
        else:
            out.append(hparams_api.HParam(name, hparams_api.RealInterval(*map(float, bounds(parameter)))))
    return out


def write_hparams_config(paths: SearchPaths, tune: TuneConfig) -> None:
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hparams_api

    with tf.summary.create_file_writer(str(paths.hparams)).as_default():
        hparams_api.hparams_config(
            hparams=_hparam_domains(tune), metrics=[hparams_api.Metric(tune.objective, display_name=tune.objective)]
        )


def write_hparams(paths: SearchPaths, tune: TuneConfig, trial_id: str, overrides: dict, score: float) -> None:
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hparams_api

    mixed = {n for n, p in tune.space.items() if p.type == "choice" and len({type(v) for v in choices(p)}) > 1}
    shown = {k: (str(v) if k in mixed else v) for k, v in overrides.items()}
    with tf.summary.create_file_writer(str(paths.hparams / f"trial_{trial_id}")).as_default():
        hparams_api.hparams(shown, trial_id=f"trial_{trial_id}")
        tf.summary.scalar(tune.objective, score, step=0)


# ----------------------------------------------------------------------------------------- results
def collect_results(tuner, paths: SearchPaths, tune: TuneConfig) -> list[dict]:
    """One row per trial the oracle knows, best first; rows carry what the trial's worker recorded."""
    direction = tune.objective_direction()
    rows = []
    for trial_id, trial in sorted(tuner.oracle.trials.items()):
        info_file = paths.trial_info / f"{trial_id}.json"
        info = json.loads(info_file.read_text()) if info_file.exists() else {}
        score = trial.score if trial.score is not None else info.get("objective")
        row = {"trial_id": trial_id, "status": str(trial.status), tune.objective: score}
        values = dict(trial.hyperparameters.values)
        for name in tune.space:
            row[name] = values.get(name, "")
        row.update(
            {
                "epochs": info.get("epochs", ""),
                "wall_s": info.get("wall_s", ""),
                "rss_mb": info.get("rss_mb", ""),
                "trial_peak_rss_mb": info.get("trial_peak_rss_mb") or "",
                "tuner_id": info.get("tuner_id", ""),
                "run_dir": ";".join(info.get("run_dirs", [])),
            }
        )
        rows.append(row)
    worst = float("inf") if direction == "min" else float("-inf")

    def key(row):
        value = row[tune.objective]
        value = worst if value is None else value
        return value if direction == "min" else -value

    return sorted(rows, key=key)


def write_results(rows: list[dict], paths: SearchPaths, tune: TuneConfig) -> None:
    from tfsft.reporting import write_csv

    write_csv(rows, paths.root / "results.csv")
    columns = [c for c in rows[0] if c != "run_dir"] if rows else []
    lines = [
        f"# Search results: {tune.tuner}, objective {tune.objective} ({tune.objective_direction()})",
        "",
        "| rank | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for rank, row in enumerate(rows, 1):
        cells = [_cell(row[c]) for c in columns]
        lines.append(f"| {rank} | " + " | ".join(cells) + " |")
    (paths.root / "results.md").write_text("\n".join(lines) + "\n")


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def best_config(base: RunConfig, rows: list[dict], tune: TuneConfig, decoders: dict) -> dict | None:
    """The base config with the best completed trial's values, minus `tune`: `tfsft.train` takes it as is."""
    completed = [r for r in rows if r[tune.objective] is not None and "COMPLETED" in r["status"]]
    if not completed:
        return None
    best = completed[0]
    values = {name: best[name] for name in tune.space if best[name] != ""}
    overrides = trial_overrides(values, tune, decoders)
    fields: dict[str, Any] = {"name": f"{base.name}_best"}
    if best.get("epochs") not in ("", None):
        fields["training.epochs"] = int(best["epochs"])
    raw = config_for_trial(base, overrides, **fields).to_dict()
    raw.pop("tune", None)
    return raw


def plot_objective(rows: list[dict], tune: TuneConfig, path: Path) -> None:
    from tfsft.reporting import _pyplot

    plt = _pyplot()
    names = list(tune.space)
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        points = [(r[name], r[tune.objective]) for r in rows if r[name] != "" and r[tune.objective] is not None]
        parameter = tune.space[name]
        if parameter.type == "choice":
            labels = [str(v) for v in choices(parameter)]
            xs: list[float] = [labels.index(str(x)) if str(x) in labels else -1 for x, _ in points]
            ax.set_xticks(range(len(labels)), labels, rotation=30 if max(map(len, labels)) > 6 else 0)
        else:
            xs = [float(x) for x, _ in points]
            if parameter.sampling == "log":
                ax.set_xscale("log")
        ax.scatter(xs, [y for _, y in points], color="tab:blue")
        ax.set_xlabel(name)
        ax.set_ylabel(tune.objective)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{tune.objective} per trial ({tune.tuner} search)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
