"""Projections: the partition logs materialised into read-models (DESIGN §7).

rows        pure, mergeable row patches (the lattice that makes writes order-insensitive)
sql         batched SQL for PostgreSQL (COPY) and SQLite (executemany)
projection  the ``Projection`` base class, the built-in read-model, ``PROJECTIONS`` loading
projector   the loop: XREADGROUP / XAUTOCLAIM -> decode -> one transaction -> XACK
entries     log entries -> events (undecodable ones are skipped and recorded)
logs        lag per partition, and trimming below what every group acknowledged
replay      rebuilds from the archive or the logs, in one transaction
verify      a fresh fold of the history compared with the rows
history     a conversation's messages, from the read-models
"""
