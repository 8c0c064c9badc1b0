"""deploy/prometheus and deploy/grafana: the files load, and every metric they query is one the
coordinator actually exports (read from a real exposition, not from a list kept here)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from cloud.metrics import CoordinatorMetrics
from cloud.mqtt_link import LinkCounters

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def exported_names() -> set[str]:
    metrics = CoordinatorMetrics(devices_online=lambda: 0, inbound_depth=lambda: 0, broker_connected=lambda: True,
                                 active_runs=lambda: 0, link_counters=lambda: LinkCounters(0, 0, 0, 0))
    metrics.device_errors.labels(code="training_failed").inc()
    names = set()
    for family in text_string_to_metric_families(metrics.render().decode()):
        names.update(sample.name for sample in family.samples)
    return names


def test_prometheus_config_scrapes_the_coordinator_metrics_path():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["job_name"] == "feddst-coordinator"
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:8080"]  # the coordinator's default api port


def test_grafana_dashboard_loads_and_queries_only_exported_metrics():
    dashboard = json.loads((DEPLOY / "grafana" / "feddst-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["panels"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    exported = exported_names()
    queried = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            queried.update(re.findall(r"feddst_[a-z_]+", target["expr"]))
    assert queried and queried <= exported, queried - exported
    # every metric family the coordinator exports is on the dashboard
    families = {re.sub(r"_(bucket|sum|count|total|created)$", "", n) for n in exported}
    shown = {re.sub(r"_(bucket|sum|count|total|created)$", "", n) for n in queried}
    assert families <= shown, families - shown
