"""Datasets, networks, losses, augmentation and the training loop."""
