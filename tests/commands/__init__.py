"""Tests of the ``myapp`` command line (myapp.commands)."""
