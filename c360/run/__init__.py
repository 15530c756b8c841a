"""Running the dataflow: the pipeline that wires the graph to Kafka and a store
(``pipeline``), crash recovery (``recovery``) and a process's one shared pipeline for
notebooks and dashboards (``shared``).
"""
