"""Bytewax dataflows: ``python -m bytewax.run dataflows.customer360:flow``."""
