"""deploy/prometheus-alerts.yml: valid rules over metrics the broker really exports.

Each expression is parsed by a real PromQL parser, and every broker series,
label and label value it selects is checked against service/metrics.py and the
code that sets them, so a renamed metric or outcome breaks this test, not the
on-call person's alerting.
"""

from __future__ import annotations

import re
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from service import metrics
from service.config import ENV_PREFIX, Settings
from tests.support import REPO

ROOT = REPO
ALERTS = ROOT / "deploy" / "prometheus-alerts.yml"
# Series from outside the broker: Prometheus's own and the blackbox exporter's.
FOREIGN_SERIES = {"up", "probe_success"}
SEVERITIES = {"critical", "warning", "info"}
_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def _broker_series() -> dict[str, set[str]]:
    """Every series name service/metrics.py exports -> the label names it carries."""
    series: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        for family in value.describe():
            for suffix in _SUFFIXES[family.type]:
                labels = set(value._labelnames)
                if suffix == "_bucket":
                    labels.add("le")
                series[family.name + suffix] = labels
    return series


def _selectors(expr: str) -> list[promql_parser.VectorSelector]:
    found: list[promql_parser.VectorSelector] = []

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)
        elif isinstance(node, promql_parser.MatrixSelector):
            found.append(node.vector_selector)
        return True

    promql_parser.walk(promql_parser.parse(expr), pre_visit=visit)
    return found


def test_rules_are_well_formed() -> None:
    rules = _rules()
    assert len(rules) >= 5
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]
        if "for" in rule:
            promql_parser.parse_duration(rule["for"])


@pytest.mark.parametrize("rule", _rules(), ids=lambda rule: str(rule["alert"]))
def test_expression_selects_real_series(rule: dict[str, Any]) -> None:
    series = _broker_series()
    source = "\n".join(path.read_text() for path in (ROOT / "service").rglob("*.py"))
    selectors = _selectors(rule["expr"])
    assert selectors, "an alert must select some series"
    for selector in selectors:
        name = selector.name
        assert name is not None, "select by metric name"
        if name in FOREIGN_SERIES:
            continue
        assert name in series, f"{name} is not exported by service/metrics.py"
        for matcher in selector.matchers.matchers:
            if matcher.name == "__name__":
                continue
            assert matcher.name in series[name], f"{name} has no label {matcher.name}"
            if matcher.op == promql_parser.MatchOp.Equal and matcher.name != "le":
                # The value must be one the code sets, e.g. outcome="transient".
                assert f'"{matcher.value}"' in source, (
                    f'{name}{{{matcher.name}="{matcher.value}"}}: the code never sets that value'
                )


def test_settings_named_in_annotations_exist() -> None:
    for rule in _rules():
        text = " ".join(rule["annotations"].values())
        for variable in re.findall(rf"{ENV_PREFIX}[A-Z0-9_]+", text):
            field = variable.removeprefix(ENV_PREFIX).lower()
            assert field in Settings.model_fields, f"{rule['alert']}: {variable} is no setting"
