"""Observability of units of work: request ids, one log record per unit, Prometheus metrics.

``config.include("myapp.observability")`` (done by :func:`myapp.includeme`) adds:

* the request-id tween, outermost: ``X-Request-ID`` accepted when sane
  (:mod:`.context`), generated otherwise, returned in the response and put on
  every log record of the request (``%(request_id)s``);
* one ``myapp.units`` log record per request with its outcome, status,
  retries, duration, statements and database time (:mod:`.units`); commands
  and business units (:func:`~.units.observe_unit`) log the same way;
* ``myapp.log_format = json|text`` (:mod:`.logs`);
* ``GET /metrics`` in Prometheus text format, open to the addresses and token
  the settings allow (:mod:`.metrics`).

Nothing here changes a unit of work: it only watches (transaction
synchronizers, SQLAlchemy engine events, a tween, pyramid_retry's events).
"""

from __future__ import annotations

from pyramid.config import Configurator
from pyramid.security import NO_PERMISSION_REQUIRED
from pyramid.settings import asbool
from pyramid.tweens import INGRESS, MAIN

from .context import HEADER, current_request_id
from .logs import configure_log_format
from .metrics import ENABLED_SETTING, MetricsAccess, metrics_view
from .units import observe_command, observe_unit

METRICS_ROUTE = "metrics"


def includeme(config: Configurator) -> None:
    settings = config.get_settings()
    configure_log_format(settings)
    # outermost: over the input guard (its 413/415 answers are requests too) and pyramid_tm
    config.add_tween(
        "myapp.observability.units.request_tween_factory",
        under=INGRESS,
        over=("myapp.views.guards.input_guard_tween_factory", "pyramid_tm.tm_tween_factory", MAIN),
    )
    if asbool(settings.get(ENABLED_SETTING, True)):
        config.registry["myapp.metrics_access"] = MetricsAccess(settings)
        config.add_route(METRICS_ROUTE, "/metrics")
        config.add_view(
            metrics_view,
            route_name=METRICS_ROUTE,
            request_method="GET",
            permission=NO_PERMISSION_REQUIRED,
        )


__all__ = ["HEADER", "current_request_id", "includeme", "observe_command", "observe_unit"]
