"""The pure functional core: rendering, plans, status, SLOs, policy and the incident engine; no I/O."""
