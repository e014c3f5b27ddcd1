from pyramid.config import Configurator


def includeme(config: Configurator) -> None:
    config.add_route("healthz", "/healthz")
    config.add_route("items", "/items")
    config.add_route("item", "/items/{id}")
