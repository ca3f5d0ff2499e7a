"""Training: slice data sets, augmentation, losses, the training loop and its curves."""
