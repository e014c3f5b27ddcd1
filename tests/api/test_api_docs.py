"""The API documentation served by the app: the spec and its explorer, public."""

from __future__ import annotations

from typing import Any

import yaml


def test_spec_is_served(testapp: Any) -> None:
    response = testapp.get("/api/openapi.yaml", status=200)
    assert response.content_type == "text/yaml"
    spec = yaml.safe_load(response.body)
    assert spec["openapi"].startswith("3.")
    assert spec["servers"] == [{"url": "/api"}]
    assert "/companies/{company_id}/dispatch" in spec["paths"]


def test_explorer_page_points_at_the_spec(testapp: Any) -> None:
    response = testapp.get("/api/docs/", status=200)
    assert response.content_type == "text/html"
    assert "swagger-ui" in response.text
    assert '"url": "/api/openapi.yaml"' in response.text
