"""zope.sqlalchemy 4.1's own test suite, ported to pytest against myapp's bridge (issue 11, item 8).

See ``test_tests.py`` (``src/zope/sqlalchemy/tests.py``), ``test_readme.py`` (the README
doctest) and the ``test_pins_*`` modules (the library behaviours myapp relies on).
"""
