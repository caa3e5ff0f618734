"""Names of the metrics the LightningModule logs once per epoch.

Kept apart from ``module`` so config validation can check ``metric`` without importing
Lightning.
"""

TRAIN_LOSS, VAL_LOSS, VAL_R2, LR = "train_loss", "val_loss", "val_r2", "lr"
LOGGED_METRICS = (TRAIN_LOSS, VAL_LOSS, VAL_R2, LR)
