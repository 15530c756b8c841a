"""Kafka in and out: the source that merges topics in event time (``source``), the
bounded sinks (``sinks``), topic admin on any cluster (``admin``) and the entity-changes
topic's records (``changes``).
"""
