"""Data in: adapters for every accepted form, inspection, splits, built-in datasets, batching."""

from .sources import DataOptions, InMemory, Source, Streamed, as_source

__all__ = ["DataOptions", "InMemory", "Source", "Streamed", "as_source"]
