"""Shared test setup: the test bed's fixtures (cluster, namespace, prometheus)."""

pytest_plugins = ["testbed.pytest_plugin"]
