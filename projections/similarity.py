"""Knowledge similarity search, ranked inside the database: only ``k`` ids come back to Python.

The path is picked per database:

- **PostgreSQL with pgvector installed in the database** (``CREATE EXTENSION vector``): pgvector's
  cosine distance ``<=>`` over the ``double precision[]`` column cast to ``vector(n)`` row by
  row, in C. Exact, unless an HNSW index exists for the query's dimension
  (``manage.py knowledge_index N``); the planner then uses it where it pays (an owner with many
  items) and the search is approximate, like every HNSW search. The index holds every owner's
  items: pgvector 0.8+ scans it on until ``k`` rows pass the owner filter (iterative scans);
  before 0.8, and past ``hnsw.max_scan_tuples``, a filtered scan can come back with fewer than
  ``k`` rows, and the search then runs again exactly, so ``k`` hits are never silently cut.
- **PostgreSQL without pgvector**: an exact cosine in SQL over the array (``unnest``). Correct,
  about eight times slower than pgvector's exact scan; ``agentstatus`` says which path is in use.
- **SQLite**: an exact cosine by a registered SQL function over float64 bytes.

pgvector is looked up once per database and again after ``RECHECK_S``, so installing the
extension or building an index needs no restart.
"""

from __future__ import annotations

import array
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from agentstream.core.errors import ConfigurationError
from agentstream.core.records import StoreKind, norm
from agentstream.projections.stores import TABLES, vector_to_db

RECHECK_S = 60.0
INDEX_PREFIX = "as_knowledge_hnsw_"  # + the dimension: the indexes `knowledge_index` builds
HNSW_MAX_DIMENSIONS = 2000  # pgvector's limit for an index on `vector`
PGVECTOR_MAX_DIMENSIONS = 16000  # pgvector's limit for a `vector`: longer ones take the SQL path
HNSW_DEFAULT_EF_SEARCH = 40  # pgvector's default candidate list
HNSW_MAX_EF_SEARCH = 1000  # pgvector's limit

TABLE = TABLES[StoreKind.KNOWLEDGE].name


@dataclass(frozen=True, slots=True)
class Hit:
    item_id: str
    score: float


@dataclass(frozen=True, slots=True)
class Pgvector:
    """pgvector as installed in one database: its version, its schema, the HNSW indexes we built."""

    version: str
    schema: str  # quoted, for qualified names: extensions may live outside the search_path
    indexed_dimensions: frozenset[int]

    @property
    def iterative_scans(self) -> bool:
        """pgvector 0.8+ walks the index on until enough rows pass the owner filter."""
        major_minor = tuple(int(p) for p in self.version.split(".")[:2] if p.isdigit())
        return major_minor >= (0, 8)

    def vector(self, dimensions: int | None = None) -> str:
        return f"{self.schema}.vector" + (f"({dimensions})" if dimensions else "")

    @property
    def cosine_distance(self) -> str:
        return f"OPERATOR({self.schema}.<=>)"


_found: dict[tuple[str, ...], tuple[float, Pgvector | None]] = {}  # database -> (when looked up, what)


def _database(connection: BaseDatabaseWrapper) -> tuple[str, ...]:
    d = connection.settings_dict
    return (str(d.get("HOST")), str(d.get("PORT")), str(d.get("NAME")))


def pgvector(connection: BaseDatabaseWrapper) -> Pgvector | None:
    """pgvector in this connection's database, or None (SQLite, or the extension is not created).

    Kept per database, not per connection: a worker or an ASGI request that opens a connection
    per call would otherwise ask the catalog on every search."""
    if connection.vendor != "postgresql":
        return None
    now = time.monotonic()
    cached = _found.get(_database(connection))
    if cached is not None and now - cached[0] < RECHECK_S:
        return cached[1]
    found = _look_up_pgvector(connection)
    _found[_database(connection)] = (now, found)
    return found


def _look_up_pgvector(connection: BaseDatabaseWrapper) -> Pgvector | None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT e.extversion, n.nspname FROM pg_extension e "
            "JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'"
        )
        row = cursor.fetchone()
        if row is None:
            return None
        cursor.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = to_regclass(%s) AND i.indisvalid AND c.relname LIKE %s",
            [TABLE, INDEX_PREFIX + "%"],
        )
        names = [str(name) for (name,) in cursor.fetchall()]
    dims = frozenset(int(n[len(INDEX_PREFIX) :]) for n in names if n[len(INDEX_PREFIX) :].isdigit())
    return Pgvector(str(row[0]), quote_identifier(str(row[1])), dims)


def quote_identifier(name: str) -> str:
    """A quoted SQL identifier (Django's quote_name does not double an embedded quote)."""
    return '"' + name.replace('"', '""') + '"'


def forget_pgvector(connection: BaseDatabaseWrapper) -> None:
    """Look pgvector up again on the next search (after creating the extension or an index)."""
    _found.pop(_database(connection), None)


def search_knowledge(
    connection: BaseDatabaseWrapper, owner: str, vector: Sequence[float], *, k: int, kind: str | None = None
) -> list[Hit]:
    """The ``k`` live items of ``owner`` most similar to ``vector`` (cosine), best first.

    Only items of the query's dimension match; the database ranks and returns ``k`` ids.
    """
    query = [float(x) for x in vector]
    where = "owner = %s AND NOT deleted AND embedding_norm > 0"
    params: list[Any] = [owner]
    if kind is not None:
        where += " AND kind = %s"
        params.append(kind)
    found = pgvector(connection)
    if found is not None and len(query) <= PGVECTOR_MAX_DIMENSIONS:
        return _pgvector_search(connection, found, query, where, params, k)
    if connection.vendor == "postgresql":
        dot = "(SELECT SUM(a * b) FROM unnest(embedding, %s::double precision[]) AS v(a, b))"
        vector_param: Any = query
    else:
        connection.ensure_connection()
        # registered per connection; cheap and idempotent
        connection.connection.create_function("agentstream_dot", 2, _sqlite_dot, deterministic=True)
        dot = "agentstream_dot(embedding, %s)"
        vector_param = vector_to_db(query, False)
    sql = (
        f"SELECT item_id, {dot} / (embedding_norm * %s) AS score FROM {TABLE} "
        f"WHERE {where} AND dimensions = %s ORDER BY score DESC, item_id LIMIT %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [vector_param, norm(query), *params, len(query), k])
        return [Hit(str(item_id), float(score)) for item_id, score in cursor.fetchall() if score is not None]


def _pgvector_search(
    connection: BaseDatabaseWrapper, pg: Pgvector, query: list[float], where: str, params: list[Any], k: int
) -> list[Hit]:
    n = len(query)  # an int we computed: inlined, so a partial index's `dimensions = n` can match
    if n not in pg.indexed_dimensions:
        return _pgvector_rows(connection, pg, query, where, params, k, n, exact=True)
    nested = connection.in_atomic_block  # then our savepoint's SET LOCAL would outlive the search
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        settings = HNSW_SETTINGS if pg.iterative_scans else HNSW_SETTINGS[:1]  # 0.8 added the second
        before = _hnsw_settings(cursor, settings) if nested else None
        # The index yields at most ef_search candidates: at least k of them, and never fewer than
        # the operator set (ALTER DATABASE .. SET hnsw.ef_search = 200 buys recall for latency).
        # Until this session has loaded pgvector's library the setting is unknown (NULL here);
        # what is set now is a placeholder that the library adopts when the query loads it.
        cursor.execute(
            "SELECT set_config('hnsw.ef_search', GREATEST(COALESCE("
            "NULLIF(current_setting('hnsw.ef_search', true), '')::int, %s), %s)::text, true)",
            [HNSW_DEFAULT_EF_SEARCH, min(HNSW_MAX_EF_SEARCH, k)],
        )
        if pg.iterative_scans:
            # relaxed order: the hits are sorted below anyway; the scan stops at
            # hnsw.max_scan_tuples, after which the exact pass below still completes the answer
            cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        # the index's own expression, `embedding::vector(n)`, lets the planner choose the index
        hits = _pgvector_rows(connection, pg, query, where, params, k, n, exact=False)
        if before is not None:  # (an error rolls the savepoint back, and the settings with it)
            _restore_hnsw_settings(cursor, settings, before)
    if len(hits) < k:
        # the index may have filtered the owner's items away: rank exactly
        hits = _pgvector_rows(connection, pg, query, where, params, k, n, exact=True)
    return hits


HNSW_SETTINGS = ("hnsw.ef_search", "hnsw.iterative_scan")


def _hnsw_settings(cursor: Any, names: tuple[str, ...]) -> tuple[str | None, ...]:
    cursor.execute("SELECT " + ", ".join(f"current_setting('{name}', true)" for name in names))
    return tuple(cursor.fetchone())


def _restore_hnsw_settings(cursor: Any, names: tuple[str, ...], before: tuple[str | None, ...]) -> None:
    for name, value in zip(names, before, strict=True):
        if value:
            cursor.execute("SELECT set_config(%s, %s, true)", [name, value])
        else:  # unknown before: pgvector's library was not loaded yet
            cursor.execute(f"SET LOCAL {name} TO DEFAULT")


def _pgvector_rows(
    connection: BaseDatabaseWrapper,
    pg: Pgvector,
    query: list[float],
    where: str,
    params: list[Any],
    k: int,
    n: int,
    *,
    exact: bool,
) -> list[Hit]:
    # Exact: `vector` without a dimension is an expression no index has, so the planner cannot
    # take one, and ties at the k-th place go to the lower id, as on the other paths. Otherwise
    # the index's own expression, ordered by distance alone (the index cannot order by id).
    cast = pg.vector() if exact else pg.vector(n)
    order = "distance, item_id" if exact else "distance"
    sql = (
        f"SELECT item_id, embedding::{cast} {pg.cosine_distance} %s::double precision[]::{cast} AS distance "
        f"FROM {TABLE} WHERE {where} AND dimensions = {n} ORDER BY {order} LIMIT %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [query, *params, k])
        rows = cursor.fetchall()
    # pgvector computes in float4: distances that differ only in float64 tie, and sort by id here
    hits = [Hit(str(item_id), 1.0 - float(distance)) for item_id, distance in rows if distance is not None]
    return sorted(hits, key=lambda h: (-h.score, h.item_id))


def _sqlite_dot(a: bytes | None, b: bytes | None) -> float | None:
    if a is None or b is None or len(a) != len(b):
        return None
    x, y = array.array("d", a), array.array("d", b)
    return sum(p * q for p, q in zip(x, y, strict=True))


def search_backend(connection: BaseDatabaseWrapper) -> str:
    """Which similarity search this database uses (``agentstatus`` shows it; workers log it)."""
    if connection.vendor != "postgresql":
        return f"{connection.vendor}: exact cosine by a registered SQL function"
    pg = pgvector(connection)
    if pg is None:
        return (
            "postgresql: exact cosine in SQL over double precision[] "
            "(slow; CREATE EXTENSION vector to rank with pgvector)"
        )
    indexed = ", ".join(str(n) for n in sorted(pg.indexed_dimensions)) or "none"
    return f"postgresql + pgvector {pg.version}: cosine distance <=> (HNSW indexes for dimensions: {indexed})"


# -- HNSW indexes, one per dimension (`manage.py knowledge_index`) ------------------------------


def index_name(dimensions: int) -> str:
    return f"{INDEX_PREFIX}{dimensions}"


def _ensure_pgvector(connection: BaseDatabaseWrapper) -> Pgvector:
    """pgvector in this PostgreSQL database (``_check_index_call`` saw to the vendor), created if
    the server has it and this role may; else why not."""
    found = pgvector(connection)
    if found is not None:
        return found
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
        if cursor.fetchone() is None:
            raise ConfigurationError(
                "pgvector is not installed on this PostgreSQL server: install it (Debian: "
                "postgresql-<major>-pgvector) and run this again; searches stay exact meanwhile"
            )
        try:
            with transaction.atomic(using=connection.alias):
                cursor.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except DatabaseError as exc:
            raise ConfigurationError(
                f"this role cannot create pgvector in the database ({str(exc).strip()}): "
                "as a superuser run CREATE EXTENSION vector; then run this again"
            ) from None
    forget_pgvector(connection)
    created = pgvector(connection)
    assert created is not None
    return created


def _check_index_call(connection: BaseDatabaseWrapper, dimensions: int) -> None:
    if connection.vendor != "postgresql":
        raise ConfigurationError(
            f"knowledge indexes need PostgreSQL with pgvector; {connection.vendor} always searches exactly"
        )
    if not 1 <= dimensions <= HNSW_MAX_DIMENSIONS:
        raise ConfigurationError(
            f"pgvector indexes 1..{HNSW_MAX_DIMENSIONS} dimensions, not {dimensions}; "
            "items of other dimensions are still searched exactly"
        )
    if connection.in_atomic_block:
        raise ConfigurationError(
            "knowledge indexes are built and dropped CONCURRENTLY, which cannot run in a transaction: "
            "call this outside transaction.atomic (and outside a migration)"
        )


def build_index(
    connection: BaseDatabaseWrapper, dimensions: int, *, m: int = 16, ef_construction: int = 64
) -> str:
    """Build (CONCURRENTLY: writes go on) the HNSW index for items of ``dimensions``; its name."""
    _check_index_call(connection, dimensions)
    if not 2 <= m <= 100 or not max(4, 2 * m) <= ef_construction <= 1000:
        raise ConfigurationError(
            f"m={m}, ef_construction={ef_construction}: pgvector takes m 2..100 and "
            "ef_construction from 2*m (at least 4) to 1000"
        )
    pg = _ensure_pgvector(connection)
    name = index_name(dimensions)
    options = [f"m={m}", f"ef_construction={ef_construction}"]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indisvalid, c.reloptions, EXISTS (SELECT 1 FROM pg_stat_progress_create_index p "
            "WHERE p.index_relid = i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indexrelid = to_regclass(%s)",
            [name],
        )
        found = cursor.fetchone()
        if found is not None:
            valid, reloptions, building = found
            if building:
                raise ConfigurationError(
                    f"{name} is being built by another session; wait for it, then run this again"
                )
            if valid and sorted(reloptions or []) != sorted(options):
                raise ConfigurationError(
                    f"{name} exists with {', '.join(reloptions or ['defaults'])}; "
                    f"drop it first (--drop) to build it with {', '.join(options)}"
                )
            if not valid:  # a CONCURRENTLY build that failed half-way: drop it, build anew
                cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        cursor.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {TABLE} "
            f"USING hnsw ((embedding::{pg.vector(dimensions)}) {pg.schema}.vector_cosine_ops) "
            f"WITH (m = {m}, ef_construction = {ef_construction}) "
            f"WHERE dimensions = {dimensions} AND NOT deleted"
        )
    forget_pgvector(connection)
    return name


def drop_index(connection: BaseDatabaseWrapper, dimensions: int) -> bool:
    """Drop the HNSW index for ``dimensions``; whether there was one."""
    _check_index_call(connection, dimensions)
    name = index_name(dimensions)
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
        (existed,) = cursor.fetchone()
        cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
    forget_pgvector(connection)
    return bool(existed)
