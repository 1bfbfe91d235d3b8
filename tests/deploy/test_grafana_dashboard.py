"""The Grafana dashboard loads, is provisioned by compose, and charts only metrics we export.

Metric names come from the registries themselves (the worker's ``WorkerMetrics`` and the fleet
exporter's families), not from a hand-kept list, so renaming a metric without the dashboard fails.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from fleet.exporter import FleetSnapshot, metric_families
from worker.metrics import WorkerMetrics

GRAFANA = Path(__file__).resolve().parents[2] / "docker" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "loopfree.json"
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
    "summary": ("_sum", "_count", "_created", ""),
}


def exported_series() -> set[str]:
    """Every series name the worker and the exporter can expose."""
    families = list(WorkerMetrics().registry.collect())
    snapshot = FleetSnapshot(taken_at=0.0, refresh_s=0.0, database_up=True, broker_up=True)
    families += metric_families(snapshot)
    return {
        family.name + suffix for family in families for suffix in _SUFFIXES[family.type]
    }


def queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_dashboard_is_valid_json_with_panels_on_the_provisioned_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["panels"]
    datasources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )["datasources"]
    uids = {source["uid"] for source in datasources}
    for panel in dashboard["panels"]:
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert panel["datasource"]["uid"] in uids
        assert {target["datasource"]["uid"] for target in panel["targets"]} <= uids


def test_every_query_names_only_metrics_the_project_exports() -> None:
    exported = exported_series()
    for expr in queries():
        names = set(re.findall(r"\bloopfree_[a-z0-9_]+", expr))
        assert names, f"query names no loopfree metric: {expr}"
        assert names <= exported, f"{expr} names {sorted(names - exported)}, which nothing exports"


def test_the_dashboard_covers_what_operators_watch() -> None:
    text = " ".join(queries())
    for metric in (
        "loopfree_images_total",  # throughput
        "loopfree_queue_depth",
        "loopfree_oldest_queued_age_seconds",
        "loopfree_batch_fill_ratio",
        "loopfree_queue_wait_seconds_bucket",  # latency percentiles
        "loopfree_gpu_memory_bytes",
        'status="failed"',
    ):
        assert metric in text, f"the dashboard has no panel on {metric}"


def test_a_misspelt_metric_would_be_caught() -> None:
    assert "loopfree_image_total" not in exported_series()
    assert "loopfree_images_total" in exported_series()


def test_compose_provisions_grafana_next_to_prometheus(compose) -> None:
    grafana = compose["services"]["grafana"]
    assert grafana["profiles"] == compose["services"]["prometheus"]["profiles"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in grafana["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    assert mounts["/var/lib/grafana/dashboards"] == "./grafana/dashboards"
    provisioning = GRAFANA / "provisioning"
    provider = yaml.safe_load((provisioning / "dashboards" / "loopfree.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
