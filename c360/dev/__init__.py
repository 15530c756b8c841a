"""Tools for development and demos: the embedded broker (``broker``), the simulated
retailer (``simulator``), the Olist replay (``olist``) and offline notebooks (``notebook``).
"""
