"""Evaluation on the shapes domain: a programmatic checker and the runner behind ``muse eval``."""

from .checker import CheckResult, DetectedObject, Detection, check, detect
from .report import EvalReport, EvalRow, format_table
from .run import SETTINGS, evaluate

__all__ = ["SETTINGS", "CheckResult", "DetectedObject", "Detection", "EvalReport", "EvalRow", "check", "detect",
           "evaluate", "format_table"]
