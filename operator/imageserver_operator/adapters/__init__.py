"""Thin I/O adapters: Kubernetes, Prometheus, Slack, the Lease, metrics, failpoints, the watch-fed store."""
