"""Evaluation on the shapes domain: a programmatic checker and the runner behind ``muse eval``."""

from .checker import CheckResult, DetectedObject, Detection, check, detect
from .run import SETTINGS, EvalReport, EvalRow, evaluate, format_table

__all__ = ["SETTINGS", "CheckResult", "DetectedObject", "Detection", "EvalReport", "EvalRow", "check", "detect",
           "evaluate", "format_table"]
