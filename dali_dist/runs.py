"""``dali-dist runs compare``: the runs of an experiment side by side in the terminal (the
MLflow UI shows the same, with plots: ``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .errors import UserError
from .tracking import probe_server, resolve_uri, sqlite_store

runs_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Inspect tracked runs.")

DEFAULT_COLUMNS = ("eval/fid,eval/inception_score,eval/fid_classifier,eval/mse,eval/modes_captured,"
                   "eval/high_quality_pct,eval/probe_accuracy,eval/knn_accuracy")


@runs_app.command("compare")
def compare_command(
    experiment: Optional[str] = typer.Option(None, "--experiment", help="Experiment name (default: all)."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="Default: MLFLOW_TRACKING_URI or ./runs/mlflow.db."),
    metrics: str = typer.Option(DEFAULT_COLUMNS, "--metrics", help="Comma-separated metric columns (latest values)."),
) -> None:
    """Print one row per run: name, variant, dataset, status and the latest metric values."""
    uri, _ = resolve_uri(tracking_uri, Path("runs") / "x")
    if uri.startswith("sqlite:///"):  # only an MLflow store: MLflow would add its tables to any file
        path = Path(uri[len("sqlite:///"):].split("?")[0])
        if not path.parent.is_dir() or sqlite_store(path, where="tracking store") != "mlflow":
            raise UserError(f"{path}: no tracking store here (pass --tracking-uri)")
    probe_server(uri)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = [e.name for e in client.search_experiments()]
            raise UserError(f"experiment {experiment!r} not found (known: {', '.join(names) or 'none'})")
        exp_ids = [exp.experiment_id]
    else:
        exp_ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exp_ids, order_by=["attributes.start_time ASC"]) if exp_ids else []
    cols = [c.strip() for c in metrics.split(",") if c.strip()]
    header = ["run", "variant", "dataset", "status", "step", *cols]
    rows = []
    for r in runs:
        hist = client.get_metric_history(r.info.run_id, "loss_d") if "loss_d" in r.data.metrics else []
        step = str(max((m.step for m in hist), default="")) if hist else ""
        rows.append([r.info.run_name or r.info.run_id[:8], r.data.tags.get("variant", ""), r.data.tags.get("dataset", ""),
                     r.info.status, step, *[_fmt(r.data.metrics.get(c)) for c in cols]])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in [header, *rows]:
        typer.echo("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))


def _fmt(v) -> str:
    return "" if v is None else f"{v:.4g}"
