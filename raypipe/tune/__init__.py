"""Hyperparameter search: spaces as data, one Optuna+ASHA study per target on Ray Tune."""
