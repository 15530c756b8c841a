"""The data model: one typed schema per stream (``events``), the commands that stream
back to an entity (``commands``) and the unit of change out of it (``delta``).
"""
