"""Training code for PMP: synthetic world, datasets, matcher and losses, training loops."""
