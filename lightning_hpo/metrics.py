"""Names of the metrics the LightningModule logs once per epoch.

Kept apart from ``module`` so config validation can check ``metric`` without importing
Lightning.
"""

LOGGED_METRICS = ("train_loss", "val_loss", "val_r2", "lr")
