"""Application-side database wiring: the layer in ``myapp.db`` plus this app's models."""

from pyramid.config import Configurator


def includeme(config: Configurator) -> None:
    config.include("myapp.db.pyramid")
    # importing the models registers them on Base.metadata (alembic, relationships)
    config.scan("myapp.models")
