"""The test suite: a package, so the tests import ``tests.helpers`` normally."""
