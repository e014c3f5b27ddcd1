"""zope.sqlalchemy 4.1's own test suite, ported to pytest against myapp's bridge (issue 11, item 8).

``test_zope_tests.py`` (``src/zope/sqlalchemy/tests.py``) and ``test_readme.py`` (the README
doctest) check myapp's bridge; the ``test_pins_*`` modules pin the zope.sqlalchemy and
``transaction`` behaviours it relies on or works around; ``test_upstream_suite.py`` runs
zope.sqlalchemy's own suite, unmodified, on this environment's libraries and databases.
"""
