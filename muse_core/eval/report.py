"""What ``muse eval`` reports and how it is shown: the rows of accuracies (from ``run.evaluate``), as a
markdown table or as a JSON-ready dict."""

from __future__ import annotations

import dataclasses
import json

from ..data.shapes import CATEGORIES


@dataclasses.dataclass
class EvalRow:
    key: str
    label: str
    accuracy: dict[str, float | None]  # per category and "overall"; None: no prompt of that kind (or skipped)
    prompts: int
    note: str = ""
    extra: dict[str, float | int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class EvalReport:
    rows: list[EvalRow]
    size: int  # base image side in pixels
    seed: int
    guidance_scale: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def format_table(report: EvalReport) -> str:
    """A markdown table: one row per setting, accuracy per category and overall."""
    def cell(value):
        return "-" if value is None else f"{100 * value:.1f}%"

    columns = [*CATEGORIES, "overall"]
    lines = [
        f"Shapes eval: {report.size} px, seed {report.seed}, guidance {report.guidance_scale:g}",
        "",
        "| setting | " + " | ".join(columns) + " | prompts | notes |",
        "|---" * (len(columns) + 3) + "|",
    ]
    for row in report.rows:
        extras = [f"{name}: {cell(value) if isinstance(value, float) else value}" for name, value in row.extra.items()]
        notes = "; ".join(filter(None, [row.note, *extras]))
        lines.append(f"| {row.label} | " + " | ".join(cell(row.accuracy[c]) for c in columns)
                     + f" | {row.prompts} | {notes} |")
    return "\n".join(lines)
