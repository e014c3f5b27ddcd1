"""Configuring the toolkit the pytest way: inert when unconfigured, any project's app and schema.

Each scenario is an inner pytest session (pytester) with a pytest.ini of its
own, as a project adopting the toolkit would write it.
"""

from __future__ import annotations

import textwrap

import pytest

from myapp.testing.plugin import ENV_DBURL, server_url

#: a project of its own: one model, a Pyramid app including myapp.db.pyramid
PROJECT = """
    from pyramid.config import Configurator
    from sqlalchemy import String
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    from myapp.db import db_transaction


    class Base(DeclarativeBase):
        pass


    class Note(Base):
        __tablename__ = "notes"
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(String(100))


    def list_notes(request):
        notes = request.dbsession.query(Note).order_by(Note.id)
        return {"greeting": request.registry.settings.get("notes.greeting"),
                "notes": [n.title for n in notes]}


    def add_note(request):
        request.dbsession.add(Note(title=request.json_body["title"]))
        return {"ok": True}


    def main(global_config, **settings):
        with Configurator(settings=settings) as config:
            config.include("myapp.db.pyramid")
            config.add_route("notes", "/notes")
            config.add_view(list_notes, route_name="notes", request_method="GET", renderer="json")
            config.add_view(add_note, route_name="notes", request_method="POST", renderer="json")
        return config.make_wsgi_app()
"""

PROJECT_TESTS = """
    from sqlalchemy import text

    from {module} import Note


    def test_commit(db):
        db.session.add(Note(title="first"))
        db.session.commit()
        assert db.session.query(Note).count() == 1


    def test_isolated(db):
        assert db.session.query(Note).count() == 0


    def test_requests(testapp, db, backend):
        testapp.post_json("/notes", {{"title": "via the app"}})
        body = testapp.get("/notes").json
        assert body == {{"greeting": "hello", "notes": ["via the app"]}}
        if backend == "postgresql":
            name = db.session.scalar(text("SELECT current_database()"))
            assert name.startswith("notesproj_"), name
"""


def _project(pytester: pytest.Pytester, module: str, ini: str) -> None:
    pytester.makepyfile(**{module: textwrap.dedent(PROJECT)})
    pytester.makepyfile(test_project=textwrap.dedent(PROJECT_TESTS.format(module=module)))
    pytester.makeini(textwrap.dedent(ini))
    pytester.syspathinsert()


def _run(pytester: pytest.Pytester, backend: str, dburl: str | None) -> pytest.RunResult:
    args = ["-p", "no:cacheprovider", "-p", "no:randomly", "-v", "--backends", backend]
    if backend != "sqlite":
        args += ["--dburl", dburl]  # type: ignore[list-item]
    return pytester.runpytest(*args)


def test_unconfigured_the_plugin_is_inert(pytester: pytest.Pytester, monkeypatch) -> None:
    """No myapp_* option: no fixtures, no parametrization, a project's own 'db' is untouched."""
    monkeypatch.delenv(ENV_DBURL, raising=False)
    pytester.makeini("[pytest]\naddopts = -p no:cacheprovider -p no:randomly\n")
    pytester.makeconftest(
        textwrap.dedent(
            """
            import pytest

            @pytest.fixture
            def db():
                return "the project's own db fixture"

            @pytest.fixture
            def backend():
                return "the project's own backend"
            """
        )
    )
    pytester.makepyfile(
        test_inert=textwrap.dedent(
            """
            import pytest

            def test_own_fixtures(db, backend):
                assert db == "the project's own db fixture"
                assert backend == "the project's own backend"

            def test_no_toolkit_fixture(request):
                for name in ("dbengine", "database", "app", "testapp", "tm", "committed_rows"):
                    with pytest.raises(pytest.FixtureLookupError):
                        request.getfixturevalue(name)
            """
        )
    )
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "myapp toolkit: not configured (no myapp_* ini option): no fixtures",
            "*::test_own_fixtures PASSED*",  # not parametrized by backend
        ]
    )
    fixtures = pytester.runpytest("--fixtures")
    assert "dbengine" not in fixtures.stdout.str()
    assert "--dburl" in pytester.runpytest("--help").stdout.str()  # the options stay


def test_a_project_names_its_app_factory_and_metadata(
    pytester: pytest.Pytester, backend: str, request: pytest.FixtureRequest
) -> None:
    _project(
        pytester,
        "notesproj_a",
        """
        [pytest]
        myapp_app = notesproj_a:main
        myapp_metadata = notesproj_a:Base
        myapp_settings =
            notes.greeting = hello
        myapp_db_prefix = notesproj_
        """,
    )
    result = _run(pytester, backend, server_url(request.config, backend))
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines([f"myapp backends: {backend}"])


def test_a_project_names_its_ini_file(
    pytester: pytest.Pytester, backend: str, request: pytest.FixtureRequest
) -> None:
    """``myapp_ini``: the app factory and settings come from the ini's ``[app:main]``."""
    pytester.makefile(
        ".ini",
        testing=textwrap.dedent(
            """
            [app:main]
            use = call:notesproj_b:main
            notes.greeting = hello
            """
        ),
    )
    _project(
        pytester,
        "notesproj_b",
        """
        [pytest]
        myapp_ini = testing.ini
        myapp_metadata = notesproj_b:Base.metadata
        myapp_db_prefix = notesproj_
        """,
    )
    result = _run(pytester, backend, server_url(request.config, backend))
    result.assert_outcomes(passed=3)


def test_configuration_errors_are_clear(pytester: pytest.Pytester, monkeypatch) -> None:
    monkeypatch.delenv(ENV_DBURL, raising=False)
    pytester.makepyfile(test_x="def test_x(db):\n    pass\n")
    pytester.makeini("[pytest]\nmyapp_app = notesproj_c:main\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*the dbengine fixture needs a schema: set myapp_metadata*"])
    pytester.makeini("[pytest]\nmyapp_ini = missing.ini\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*myapp_ini: *missing.ini does not exist*"])
    pytester.makeini("[pytest]\nmyapp_metadata = x:y\nmyapp_db_prefix = Bad-Prefix\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*myapp_db_prefix: test database prefix 'Bad-Prefix'*"])
