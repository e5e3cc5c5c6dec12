"""Real test peers, started and stopped by the tests: mosquitto, PostgreSQL, sushy-tools, the daemon and
the lab as processes. `tests.peers.plugin` gives their fixtures to every test (pyproject addopts)."""
