"""Outputs of a run: metrics.json, history.csv and a self-contained report.html."""

from .files import read_history, write_history, write_json
from .html import ReportData, write_report

__all__ = ["ReportData", "read_history", "write_history", "write_json", "write_report"]
