"""Where entities live once folded: the in-memory store (``memory``) and replicas
materialized from the changes topic (``replica``).
"""
