"""Pure rule modules: dispatch (首接负责, 属地兜底), duplicates, evaluation formulas, rule files."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from cityops.cases import dispatch, duplicates, metrics, service
from cityops.core.rules import RuleFileError

RULES = dispatch.DispatchRules.model_validate(
    {
        "version": 1,
        "source": "test",
        "departments": [
            {"code": "street_office", "name": "甲街道办"},
            {"code": "law_enforcement", "name": "城管执法"},
            {"code": "housing", "name": "住建"},
            {"code": "eco_env", "name": "生态环境"},
        ],
        "rules": [
            # a city's specific rule first: in street 110105001 the street office takes ads
            {
                "categories": ["event:0201"],
                "areas": ["110105001"],
                "departments": ["street_office"],
            },
            {"categories": ["event:0201"], "departments": ["law_enforcement"]},
            {"categories": ["event:0302"], "departments": ["housing", "eco_env"]},
        ],
    }
)


def test_dispatch_first_match_lead_and_district_fallback() -> None:
    a = dispatch.assign(RULES, "event:0201", "110105", "110105001002001")
    assert (a.lead, a.assisting, a.rule) == ("street_office", (), 0)
    a = dispatch.assign(RULES, "event:0201", "110105", "110105002001001")
    assert (a.lead, a.rule) == ("law_enforcement", 1)
    a = dispatch.assign(RULES, "event:0302", "110105", "110105002001001")
    assert (a.lead, a.assisting) == ("housing", ("eco_env",))  # 首接负责: first leads
    a = dispatch.assign(RULES, "event:0510", "110108", "110108001")
    assert (a.lead, a.rule) == ("district:110108", None)  # 属地兜底
    assert "兜底" in a.reason
    assert RULES.is_known("district:110108") and not RULES.is_known("district:11")
    assert RULES.name_of("district:110108", "海淀区") == "海淀区（兜底）"


def test_dispatch_rule_file_is_validated() -> None:
    with pytest.raises(ValueError, match="not in `departments`"):
        dispatch.DispatchRules.model_validate(
            {
                "version": 1,
                "source": "x",
                "departments": [{"code": "a1", "name": "A"}],
                "rules": [{"categories": ["event:0101"], "departments": ["b1"]}],
            }
        )
    with pytest.raises(ValueError, match="prefix"):
        dispatch.DispatchRule.model_validate(
            {"categories": ["event:0101"], "areas": ["1101x"], "departments": ["a"]}
        )


def test_duplicates_distance_time_and_text() -> None:
    rules = duplicates.DuplicateRules(
        version=1, source="t", distance_m=50, window_hours=72, min_text_similarity=0.25
    )
    t0 = dt.datetime(2025, 9, 29, 2, tzinfo=dt.UTC)
    lon, lat = 116.4050, 39.9050
    # 0.0005° of longitude at 39.9° N is about 42.7 m; 0.0001° of latitude about 11.1 m
    cands = [
        duplicates.Candidate(
            "NEAR", lon + 0.0005, lat, t0 - dt.timedelta(hours=1), "路边暴露垃圾很臭"
        ),
        duplicates.Candidate("FAR", lon + 0.0008, lat, t0, "路边暴露垃圾很臭"),
        duplicates.Candidate("OLD", lon, lat + 0.0001, t0 - dt.timedelta(hours=80), "路边暴露垃圾"),
        duplicates.Candidate("OTHER", lon, lat + 0.0001, t0, "井盖丢失有人掉下去"),
        duplicates.Candidate("NOTEXT", lon, lat + 0.0002, t0, ""),
    ]
    found = duplicates.find(rules, lon, lat, t0, "暴露垃圾 路边很臭", cands)
    assert [m.id for m in found] == ["NOTEXT", "NEAR"]
    near = next(m for m in found if m.id == "NEAR")
    assert near.distance_m == pytest.approx(42.7, abs=0.5) and near.minutes_apart == 60
    minx, _, maxx, _ = duplicates.search_box(rules, lon, lat)
    assert minx < lon + 0.0005 < maxx and maxx < lon + 0.0008  # the box is tight but safe
    assert duplicates.similarity("暴露垃圾", "暴露垃圾") == 1.0
    assert duplicates.similarity("", "x") is None


def test_tianmen_fixture_rates() -> None:
    """天门, December 2016 (REFERENCE Part A §5, [V]): 受理 1054, 立案 996, 应结案 972,
    结案 911 → 结案率 93.72 %; 按期结案 737 → 按期结案率 75.82 %."""
    got = metrics.area_figures(
        {
            "reported": 1054,
            "registered": 996,
            "due_to_close": 972,
            "closed": 911,
            "closed_on_time": 737,
        }
    )
    assert got["closure_rate"] == 93.72
    assert got["on_time_closure_rate"] == 75.82
    assert got["rework_rate"] == 0.0
    assert got["satisfaction_rate"] is None  # no follow-ups: null, not 0 %


def test_three_rates() -> None:
    got = metrics.area_figures(
        {
            "feedback_valid": 200,
            "feedback_contacted": 190,
            "feedback_solved": 150,
            "feedback_satisfied": 120,
            "feedback_basic": 50,
        }
    )
    assert (got["response_rate"], got["resolution_rate"]) == (95.0, 75.0)
    assert got["satisfaction_rate"] == 82.5  # (120 + 0.9 × 50) / 200
    w = metrics.worker_figures(
        {
            "reports": 40,
            "reports_registered": 30,
            "checks": 12,  # done anywhere; the rate is over the tasks of their grids
            "due_checks": 10,
            "checked_on_time": 9,
            "missed": 3,
            "grid_registered": 30,
        }
    )
    assert (w["valid_report_rate"], w["on_time_check_rate"]) == (75.0, 90.0)
    assert w["missed_rate"] == 10.0
    assert w["on_time_verification_rate"] is None  # no public report to verify


def test_department_composite_score_and_grades() -> None:
    """部门评价 综合指标值 = 立案数分值×10% + 结案率×30% + 按期处置率×30% + (100 − 返工率)×30%,
    立案数分值 tiered ≤50 → 100, ≤100 → 90, ≤200 → 75, ≤500 → 60, ≤1000 → 40, else 0;
    grades A 90–100, B 75–<90, C 60–<75, D 40–<60, E <40 (REFERENCE Part A §5)."""
    ev = service.case_rules().evaluation
    rule = ev.scores["department"]
    figures = {
        "registered": 120,
        "closure_rate": 90.0,
        "on_time_handling_rate": 80.0,
        "rework_rate": 10.0,
    }
    # 75 × 10 % + 90 × 30 % + 80 × 30 % + (100 − 10) × 30 %
    assert metrics.score(figures, rule) == 85.5
    assert metrics.grade(85.5, ev.grades) == "B"
    assert metrics.score({**figures, "registered": 50}, rule) == 88.0  # 50 is still ≤ 50
    assert metrics.score({**figures, "registered": 1001}, rule) == 78.0  # above every tier
    assert metrics.score({**figures, "rework_rate": None}, rule) is None  # nothing to judge
    bands = [(100, "A"), (90, "A"), (89.99, "B"), (75, "B"), (60, "C"), (40, "D"), (39.9, "E")]
    assert [metrics.grade(v, ev.grades) for v, _ in bands] == [g for _, g in bands]
    assert metrics.grade(0, ev.grades) == "E" and metrics.grade(None, ev.grades) is None


def test_score_rules_are_checked() -> None:
    base = {"version": 1, "source": "t"}
    term = {"figure": "closure_rate", "weight": 60}
    with pytest.raises(ValueError, match="sum to 60"):
        metrics.EvaluationRules.model_validate(
            {**base, "scores": {"department": {"source": "x", "terms": [term]}}}
        )
    with pytest.raises(ValueError, match="not a figure of that table"):
        metrics.EvaluationRules.model_validate(
            {
                **base,
                "scores": {
                    "worker": {"source": "x", "terms": [{**term, "weight": 100}]}
                },  # a department figure asked of the grid workers' table
            }
        )
    with pytest.raises(ValueError, match="not one of"):
        metrics.EvaluationRules.model_validate(
            {**base, "scores": {"city": {"source": "x", "terms": [{**term, "weight": 100}]}}}
        )


def test_rule_files_load_and_a_city_can_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = service.case_rules()
    assert all(c.standard_ref for c in rules.categories.values())
    assert rules.categories["component:0101"].code_47678 == "01001"
    assert rules.policy.max_escalation == 3
    from cityops.settings import get_settings

    (tmp_path / "cases").mkdir()
    (tmp_path / "cases" / "dispatch.yaml").write_text(
        "version: 1\nsource: city\ndepartments: [{code: a1, name: A}]\n"
        "rules: [{categories: ['event:9999'], departments: [a1]}]\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("CITYOPS_RULES_DIR", str(tmp_path))
    get_settings.cache_clear()
    service.clear_caches()
    try:
        with pytest.raises(RuleFileError, match="unknown"):
            service.case_rules()
    finally:
        monkeypatch.delenv("CITYOPS_RULES_DIR")
        get_settings.cache_clear()
        service.clear_caches()


def test_case_ids_are_short_and_unambiguous() -> None:
    ids = {service.new_case_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 10 and not set(i) & set("ILOU") for i in ids)


def test_masking() -> None:
    assert service.mask_phone("13812345678") == "138****5678"
    assert service.mask_name("欧阳修") == "欧**"
    assert service.mask_email("li.si@example.cn") == "l***@example.cn"


def test_open_sql_matches_the_machine() -> None:
    import re

    from cityops.cases.machine import OPEN
    from cityops.cases.models import OPEN_SQL

    assert set(re.findall(r"'(\w+)'", OPEN_SQL)) == {s.value for s in OPEN}
