"""Learning from unlabeled images."""
