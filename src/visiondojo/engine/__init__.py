"""The engine: one training loop, evaluation, device/precision choices, checkpoints."""
