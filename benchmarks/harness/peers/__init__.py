"""Standalone scripts run inside each peer engine's own virtual environment.

They import nothing from c360 (it is not installed there). Each reads the benchmark
topics from the beginning, keeps per-entity aggregates (events and money per key),
stops once it has seen the sentinel ending every topic partition, and prints one JSON
line: events, cpu_s, wall_s.
"""
