"""Regularization: what keeps a model from fitting the training set at the expense of new data."""
