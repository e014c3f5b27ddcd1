"""The myapp pytest plugin (myapp.testing.plugin) provides the fixtures: db, dbsession, tm,
app, testapp, app_request, dbengine. It is registered by the package's pytest11 entry point."""
