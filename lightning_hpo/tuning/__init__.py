"""Tuning: tune(), the objective, the study, its trial accounting, signals and worker processes."""
