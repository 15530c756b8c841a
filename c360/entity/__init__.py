"""The per-entity fold, in plain Python that never imports bytewax: the state and one
fold per stream (``state``), a shard of entities (``shard``), what follows each fold
(``derive``: windows of relevance, rules, segments, aging), business logic (``logic``) and
the global windows' core (``analytics``).
"""
