"""Pruners: PFL, the Predicted Final Loss pruner, and its curve arithmetic."""
