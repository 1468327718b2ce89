"""The local federation's live dashboard: the federation graph with live counters per arrow
from the gateways' Envoy stats, which exporter serves each import, and the boundary log's tail.

``meshfed up`` runs it as one more background process (``launch.py``); ``stats.py`` maps Envoy
stats to counters, ``logtail.py`` follows the boundary log, ``collect.py`` builds the JSON state,
``page.py`` and ``server.py`` serve it on loopback. Nothing is imported here, so the runtime can
import ``launch`` without the rest.
"""
