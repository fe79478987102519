"""MLflow tracking: runs, per-epoch metrics, plots."""
