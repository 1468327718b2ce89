"""The local federation: every mesh of a spec on this machine, on real Envoy processes.

A sink of the plan: ``render/envoy`` turns the plan into Envoy configuration; this package
allocates ports, issues workload certificates, writes the watched xDS files, runs and watches the
processes (Envoys and one workload host), and answers ``status``, ``call`` and ``logs``.
"""
