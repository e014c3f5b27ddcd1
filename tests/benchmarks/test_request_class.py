"""The request-overhead fix the benchmark led to (``bake_request_properties``): one request class.

Pyramid used to build a new request class per request for the request
properties; myapp's router now uses one class, built at startup, that carries
them all. These tests pin that down and check that nothing was lost.
"""

from __future__ import annotations

from typing import Any

from pyramid.interfaces import IRequestExtensions
from pyramid.request import Request, apply_request_extensions
from pyramid.scripting import prepare

PROPERTIES = {"dbsession", "db", "tm", "openapi_validated"}


def test_the_router_builds_every_request_from_one_class_with_the_properties(app: Any) -> None:
    factory = app.request_factory
    assert issubclass(factory, Request) and factory is not Request
    assert set(vars(factory)) >= PROPERTIES
    assert app.request_extensions.descriptors == {}
    first = app.request_factory(Request.blank("/items/1").environ)
    second = app.request_factory(Request.blank("/items/2").environ)
    apply_request_extensions(first, extensions=app.request_extensions)
    apply_request_extensions(second, extensions=app.request_extensions)
    assert type(first) is type(second) is factory  # no class made per request


def test_requests_made_outside_the_router_still_get_the_properties(app: Any) -> None:
    registered = app.registry.queryUtility(IRequestExtensions)
    assert set(registered.descriptors) >= PROPERTIES  # the registry's extensions are untouched
    request = Request.blank("/")
    request.registry = app.registry
    apply_request_extensions(request)
    assert all(hasattr(type(request), name) for name in PROPERTIES)
    env = prepare(registry=app.registry)
    try:
        assert env["request"].db is app.registry["db"]
    finally:
        env["closer"]()


def test_request_properties_work_through_the_real_stack(testapp: Any) -> None:
    created = testapp.post("/items", status=200).json
    assert testapp.get(f"/items/{created['id']}", status=200).json == created
