"""Training runs: components built from a run config, the Trainer, the preflight, results, checkpoints loaded back."""
