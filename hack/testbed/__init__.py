"""The local test bed: a real Kubernetes control plane built from Go modules, KWOK nodes,
Prometheus, and the helpers the tests use to reach them.

Standard library only, so `make cluster-up` works before any virtualenv exists.
"""
