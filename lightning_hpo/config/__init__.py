"""Config files: the run config, the optimize config and its search space, read, checked and resolved once."""
