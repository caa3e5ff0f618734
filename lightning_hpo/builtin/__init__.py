"""The built-in task: an MLP, the supervised LightningModule and its data."""
