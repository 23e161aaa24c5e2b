"""Training: trainer, checkpoints, configs, distributed."""
