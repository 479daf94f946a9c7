"""The two loops: the reconcile controller and the SLO remediation loop."""
