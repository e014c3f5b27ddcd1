"""The JSON API under ``/api``, validated against ``openapi.yaml`` by pyramid_openapi3.

``config.include("myapp.api")`` adds:

* the routes of every operation of the spec (pyramid_openapi3 refuses to start
  if a path of the spec has no route), company-scoped ones with a
  :class:`~myapp.api.security.CompanyContext`;
* request validation (400 naming the field) and response validation (a
  response off the spec is a 500 and aborts the transaction) for every view;
* the spec at ``/api/openapi.yaml`` and its explorer (Swagger UI) at ``/api/docs/``;
* the security policy (:mod:`myapp.api.security`): bearer tokens, hashed;
* the dispatch trigger as a *durable route* outside pyramid_tm
  (:mod:`myapp.db.pyramid.durable`), because the dispatch engine commits by itself.

Settings: ``myapp.admin_token_hash`` (see :mod:`myapp.services.tokens`);
``pyramid_openapi3.enable_response_validation`` (default true).
"""

from __future__ import annotations

import logging

from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError
from pyramid.tweens import EXCVIEW

from myapp.services.tokens import ADMIN_SETTING, admin_token_hashes

from .errors import add_error_views
from .security import CompanyContext
from .spec import EXPLORER_TEMPLATE, SPEC_PATH, add_offline_explorer, install_validation_cache

log = logging.getLogger(__name__)

#: route name → pattern; the names are what views and the access tests refer to
COMPANY_ROUTES = {
    "api.company": "/api/companies/{company_id}",
    "api.company_token": "/api/companies/{company_id}/token",
    "api.drivers": "/api/companies/{company_id}/drivers",
    "api.driver": "/api/companies/{company_id}/drivers/{driver_id}",
    "api.bookings": "/api/companies/{company_id}/bookings",
    "api.booking": "/api/companies/{company_id}/bookings/{booking_id}",
    "api.booking_status": "/api/companies/{company_id}/bookings/{booking_id}/status",
    "api.booking_cancel": "/api/companies/{company_id}/bookings/{booking_id}/cancel",
    "api.dispatch_runs": "/api/companies/{company_id}/dispatch-runs",
    "api.invoices": "/api/companies/{company_id}/invoices",
}
#: routes served outside pyramid_tm: their views run durable units of work
DURABLE_COMPANY_ROUTES = {
    "api.dispatch": "/api/companies/{company_id}/dispatch",
}


def includeme(config: Configurator) -> None:
    try:
        if not admin_token_hashes(config.get_settings()):
            log.info("no admin token configured (%s): admin operations are refused", ADMIN_SETTING)
    except ValueError as exc:  # fail at startup, not on the first admin request
        raise ConfigurationError(str(exc)) from exc
    install_validation_cache()
    # the input guard (413, invalid UTF-8, unstorable JSON) for every route of the app
    config.include("myapp.views.guards")
    config.include("pyramid_openapi3")
    # pyramid_openapi3 puts its response-validation tween "over EXCVIEW", as
    # pyramid_tm does its own, with no order between them. Validation must run
    # inside the transaction, so that a response off the spec (turned into a
    # 500) aborts it instead of being reported after a commit.
    config.add_tween(
        "pyramid_openapi3.tween.response_tween_factory",
        over=EXCVIEW,
        under="pyramid_tm.tm_tween_factory",
    )
    config.pyramid_openapi3_spec(SPEC_PATH, route="/api/openapi.yaml", route_name="apidocs.spec")
    config.pyramid_openapi3_add_explorer(
        route="/api/docs/",
        route_name="apidocs.explorer",
        oauth_redirect_route_name="apidocs.oauth2_redirect",
        ui_config={"persistAuthorization": True},
        template=EXPLORER_TEMPLATE,
    )
    add_offline_explorer(config)
    add_error_views(config)
    config.include(".security")

    config.add_route("api.companies", "/api/companies")
    for name, pattern in COMPANY_ROUTES.items():
        config.add_route(name, pattern, factory=CompanyContext)
    for name, pattern in DURABLE_COMPANY_ROUTES.items():
        config.add_durable_route(name, pattern, factory=CompanyContext)
    config.scan(".views")
