"""Panel dashboards over the live entity store (``panel serve dashboards/<name>.py``)."""
