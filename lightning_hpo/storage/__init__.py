"""Storages: opening them, failing dead workers' trials, optuna-dashboard's view."""
