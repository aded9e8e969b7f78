"""Helpers the test modules share (no tests here).

- :mod:`tests.helpers.redis_server`: a private ``redis-server`` on a free port;
- :mod:`tests.helpers.sandbox`: the amoCRM sandbox fixtures (a pytest plugin);
- :mod:`tests.helpers.client`: the ``test_client_*`` modules' fixtures and helpers
  (a pytest plugin);
- :mod:`tests.helpers.e2e`: a site with forms and what it stored.
"""
