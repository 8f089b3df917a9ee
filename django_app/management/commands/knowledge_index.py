"""``manage.py knowledge_index [N ...] [--drop]``: pgvector HNSW indexes for knowledge search.

Without dimensions it reports the search path in use. With them it builds (or, with ``--drop``,
removes) one index per embedding dimension, CONCURRENTLY, so agents keep writing meanwhile.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connections

from agentstream.core.errors import ConfigurationError
from agentstream.django_app.management.operator_errors import operator_errors
from agentstream.projections.similarity import build_index, drop_index, forget_pgvector, search_backend


class Command(BaseCommand):
    help = (
        "Build pgvector HNSW indexes for knowledge items of the given embedding dimensions "
        "(approximate, fast search for owners with many items), --drop them, or show the search path."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("dimensions", nargs="*", type=int, help="embedding dimensions, e.g. 1536")
        parser.add_argument("--drop", action="store_true", help="remove the indexes instead")
        parser.add_argument("--m", type=int, default=16, help="HNSW links per node (pgvector's m)")
        parser.add_argument("--ef-construction", type=int, default=64, help="HNSW build candidate list")
        parser.add_argument("--database", default="default")

    def handle(self, *args: Any, **options: Any) -> None:
        with operator_errors(options["database"]):
            self._handle(options)

    def _handle(self, options: dict[str, Any]) -> None:
        connection = connections[options["database"]]
        forget_pgvector(connection)  # report what is there now, not what a minute-old look-up saw
        for dimensions in options["dimensions"]:
            try:
                if options["drop"]:
                    dropped = drop_index(connection, dimensions)
                    self.stdout.write(f"{'dropped' if dropped else 'no'} index for {dimensions} dimensions")
                else:
                    name = build_index(
                        connection, dimensions, m=options["m"], ef_construction=options["ef_construction"]
                    )
                    self.stdout.write(f"{name}: HNSW cosine index for {dimensions} dimensions")
            except ConfigurationError as exc:
                raise CommandError(str(exc)) from None
            except DatabaseError as exc:  # e.g. out of maintenance_work_mem, a lock timeout
                message = " ".join(str(exc).split())
                raise CommandError(f"the index for {dimensions} dimensions failed: {message}") from None
        self.stdout.write(f"knowledge search: {search_backend(connection)}")
