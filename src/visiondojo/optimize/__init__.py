"""Optimization: optimizers, schedules, and the run length planned from measured throughput."""
