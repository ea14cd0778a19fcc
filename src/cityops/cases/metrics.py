"""Evaluation figures (综合评价): CJ/T 292 area/department/post indicators and the 12345 三率.

Formulas (REFERENCE Part A §5, quoted from one implementation of the national evaluation
standard [1]; §6 for the 三率 [1]), all rates in per cent:

* 结案率 = 结案数 / 应结案数; 按期结案率 = 按期结案数 / 应结案数 (the 天门 fixture uses 应结案数
  as denominator for both [V]); 返工率 = 返工数 / 应结案数 (the implementation's denominator).
* 处置率 = 处置数 / 应处置数; 按期处置率 = 按期处置数 / 应处置数 (department evaluation).
* 监督举报率 = 监督举报核实数 / 立案数: public reports that became cases, i.e. problems the grid
  workers missed (lower is better).
* Grid worker (监督员, DESIGN §8 "Roles"): 有效上报率 = 有效上报数 / 上报数; 按时核实率 =
  按时核实数 / 应核实数; 按时核查率 = 按时核查数 / 应核查数; 漏报率 = 漏报数 / 立案数. The tasks
  are those of the grids assigned to the worker (``grid_assignments``): every public report in
  them is one 核实 task, every resolution one 核查 task; 漏报数 counts the public reports in
  them that were registered (problems the worker did not report); 立案数 is their grids'.
  核实数 / 核查数 (all the worker did, anywhere) are shown beside.
* 12345 三率 over 有效回访数 (valid follow-ups): 响应率 = 已联系数 / 有效回访数, 解决率 = 已解决数 /
  有效回访数, 满意率 = (满意数 + w × 基本满意数) / 有效回访数 with w from ``evaluation.yaml``
  (0.9 [1]; Beijing's official coefficient is [U]).

A rate with a zero denominator is ``None`` (no cases to judge), not 0 % (decision recorded in
``evaluation.yaml``). Pure: the service gathers the counts with one grouped SQL query.

综合指标值 (composite score, 0–100) and its grade (A 90–100, B 75–<90, C 60–<75, D 40–<60,
E <40; §5 [1]): a weighted sum of the table's figures, each scored 0–100 ("分值": a rate as it
is, a lower-is-better rate as 100 − rate, a count by the city's tiers). Which figures and
weights, per group, is ``evaluation.yaml``'s ``scores``: cityops ships the department formula
of §5 (立案数分值×10% + 结案率×30% + 按期处置率×30% + (100 − 返工率)×30%) and the grid worker's
(有效上报率×40% + (100 − 漏报率)×20% + 按时核实率×20% + 按时核查率×20%). The area formula's
weights are mis-copied in the source (they sum to 70 %): not shipped, a city may add its own.
A score with a figure that has nothing to judge (``None``) is ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel, Field, model_validator

GROUPS = ("department", "street", "grid", "worker")


class ScoreTerm(BaseModel):
    """One figure of a composite score: its 0–100 分值 times ``weight`` per cent."""

    figure: str
    weight: float = Field(gt=0, le=100)
    lower_is_better: bool = False
    #: a count's 分值: ``[max, score]`` pairs, ascending; the first whose max the count does
    #: not exceed gives the score, else ``otherwise``
    tiers: list[tuple[float, float]] | None = None
    otherwise: float = Field(0, ge=0, le=100)


class ScoreRule(BaseModel):
    source: str
    terms: list[ScoreTerm] = Field(min_length=1)

    @model_validator(mode="after")
    def _weights_sum_to_100(self) -> ScoreRule:
        total = sum(t.weight for t in self.terms)
        if abs(total - 100) > 1e-6:
            raise ValueError(f"the weights sum to {total:g} %, not 100 %")
        return self


class EvaluationRules(BaseModel):
    """``cases/evaluation.yaml``."""

    version: int
    source: str
    basically_satisfied_weight: float = Field(0.9, ge=0, le=1)
    #: composite score per group (department, street, grid, worker)
    scores: dict[str, ScoreRule] = Field(default_factory=dict)
    #: ``[lowest score, grade]``, highest first
    grades: list[tuple[float, str]] = Field(
        default_factory=lambda: [(90, "A"), (75, "B"), (60, "C"), (40, "D"), (0, "E")]
    )

    @model_validator(mode="after")
    def _known_figures(self) -> EvaluationRules:
        for group, rule in self.scores.items():
            if group not in GROUPS:
                raise ValueError(f"scores: {group!r} is not one of {', '.join(GROUPS)}")
            known = {c.key for c in columns_for(group)}
            for term in rule.terms:
                if term.figure not in known:
                    raise ValueError(
                        f"scores.{group}: {term.figure!r} is not a figure of that table "
                        f"(one of: {', '.join(sorted(known))})"
                    )
        return self


@dataclass(frozen=True)
class Column:
    key: str
    zh: str
    en: str


#: counts gathered per area/department group (names of the SQL aggregate columns)
AREA_COUNTS = (
    "reported",
    "registered",
    "declined",
    "public_registered",
    "due_to_handle",
    "handled",
    "handled_on_time",
    "due_to_close",
    "closed",
    "closed_on_time",
    "reworked",
    "overdue_open",
    "handling_minutes_sum",
    "handling_minutes_n",
    "feedback_valid",
    "feedback_contacted",
    "feedback_solved",
    "feedback_satisfied",
    "feedback_basic",
)
#: counts gathered per grid worker
WORKER_COUNTS = (
    "reports",
    "reports_registered",
    "verifications",
    "checks",
    "due_verifications",
    "verified_on_time",
    "due_checks",
    "checked_on_time",
    "missed",
    "grid_registered",
)

AREA_COLUMNS = (
    Column("reported", "受理数", "reports received"),
    Column("registered", "立案数", "cases registered"),
    Column("declined", "作废数", "declined"),
    Column("public_report_rate", "监督举报率(%)", "public-report rate %"),
    Column("due_to_handle", "应处置数", "due to be handled"),
    Column("handled", "处置数", "handled"),
    Column("handling_rate", "处置率(%)", "handling rate %"),
    Column("on_time_handling_rate", "按期处置率(%)", "on-time handling rate %"),
    Column("due_to_close", "应结案数", "due to be closed"),
    Column("closed", "结案数", "closed"),
    Column("closed_on_time", "按期结案数", "closed on time"),
    Column("closure_rate", "结案率(%)", "closure rate %"),
    Column("on_time_closure_rate", "按期结案率(%)", "on-time closure rate %"),
    Column("reworked", "返工数", "reworked"),
    Column("rework_rate", "返工率(%)", "rework rate %"),
    Column("overdue_open", "超期未结数", "open and overdue"),
    Column("avg_handling_hours", "平均处置时长(工作时)", "mean handling time, working hours"),
    Column("feedback_valid", "有效回访数", "valid follow-ups"),
    Column("response_rate", "响应率(%)", "response rate %"),
    Column("resolution_rate", "解决率(%)", "resolution rate %"),
    Column("satisfaction_rate", "满意率(%)", "satisfaction rate %"),
)
WORKER_COLUMNS = (
    Column("reports", "上报数", "reports"),
    Column("reports_registered", "有效上报数", "reports registered"),
    Column("valid_report_rate", "有效上报率(%)", "valid-report rate %"),
    Column("verifications", "核实数", "verifications done (核实)"),
    Column("due_verifications", "应核实数", "verifications due in their grids"),
    Column("on_time_verification_rate", "按时核实率(%)", "on-time verification rate %"),
    Column("checks", "核查数", "checks done (核查)"),
    Column("due_checks", "应核查数", "checks due in their grids"),
    Column("on_time_check_rate", "按时核查率(%)", "on-time check rate %"),
    Column("missed", "漏报数", "public reports registered in their grids"),
    Column("missed_rate", "漏报率(%)", "missed rate %"),
)


def rate(numerator: float, denominator: float) -> float | None:
    """Per cent, two decimals; ``None`` when there is nothing to divide by."""
    if not denominator:
        return None
    return round(100.0 * numerator / denominator, 2)


def area_figures(
    counts: Mapping[str, float], basically_satisfied_weight: float = 0.9
) -> dict[str, float | None]:
    """CJ/T 292 area / department figures and the 12345 三率 from the grouped counts."""
    c = {k: float(counts.get(k) or 0) for k in AREA_COUNTS}
    valid = c["feedback_valid"]
    n = c["handling_minutes_n"]
    return {
        "reported": c["reported"],
        "registered": c["registered"],
        "declined": c["declined"],
        "public_report_rate": rate(c["public_registered"], c["registered"]),
        "due_to_handle": c["due_to_handle"],
        "handled": c["handled"],
        "handling_rate": rate(c["handled"], c["due_to_handle"]),
        "on_time_handling_rate": rate(c["handled_on_time"], c["due_to_handle"]),
        "due_to_close": c["due_to_close"],
        "closed": c["closed"],
        "closed_on_time": c["closed_on_time"],
        "closure_rate": rate(c["closed"], c["due_to_close"]),
        "on_time_closure_rate": rate(c["closed_on_time"], c["due_to_close"]),
        "reworked": c["reworked"],
        "rework_rate": rate(c["reworked"], c["due_to_close"]),
        "overdue_open": c["overdue_open"],
        "avg_handling_hours": round(c["handling_minutes_sum"] / n / 60, 2) if n else None,
        "feedback_valid": valid,
        "response_rate": rate(c["feedback_contacted"], valid),
        "resolution_rate": rate(c["feedback_solved"], valid),
        "satisfaction_rate": rate(
            c["feedback_satisfied"] + basically_satisfied_weight * c["feedback_basic"], valid
        ),
    }


def worker_figures(counts: Mapping[str, float]) -> dict[str, float | None]:
    """Grid worker (监督员) post figures."""
    c = {k: float(counts.get(k) or 0) for k in WORKER_COUNTS}
    return {
        "reports": c["reports"],
        "reports_registered": c["reports_registered"],
        "valid_report_rate": rate(c["reports_registered"], c["reports"]),
        "verifications": c["verifications"],
        "due_verifications": c["due_verifications"],
        "on_time_verification_rate": rate(c["verified_on_time"], c["due_verifications"]),
        "checks": c["checks"],
        "due_checks": c["due_checks"],
        "on_time_check_rate": rate(c["checked_on_time"], c["due_checks"]),
        "missed": c["missed"],
        "missed_rate": rate(c["missed"], c["grid_registered"]),
    }


def columns_for(group_by: str) -> tuple[Column, ...]:
    return WORKER_COLUMNS if group_by == "worker" else AREA_COLUMNS


SCORE_COLUMNS = (
    Column("score", "综合指标值", "composite score"),
    Column("grade", "等级", "grade"),
)


def term_score(term: ScoreTerm, value: float | None) -> float | None:
    """A figure's 分值 (0–100)."""
    if value is None:
        return None
    if term.tiers is not None:
        for top, points in term.tiers:
            if value <= top:
                return points
        return term.otherwise
    return 100.0 - value if term.lower_is_better else value


def score(figures: Mapping[str, float | None], rule: ScoreRule) -> float | None:
    """综合指标值: the weighted sum of the terms' 分值, two decimals."""
    total = 0.0
    for term in rule.terms:
        points = term_score(term, figures.get(term.figure))
        if points is None:
            return None
        total += points * term.weight / 100
    return round(total, 2)


def grade(value: float | None, grades: list[tuple[float, str]]) -> str | None:
    """The grade of a composite score (the first band whose lowest score it reaches)."""
    if value is None:
        return None
    for lowest, name in sorted(grades, reverse=True):
        if value >= lowest:
            return name
    return None
