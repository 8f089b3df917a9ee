"""``knowledge``: one knowledge search's latency, by path, with N items of 256 dimensions per owner.

Two owners of N items each, in 64 clusters (as embeddings cluster by topic), the same rows in
three databases of one server: one without pgvector (the exact cosine in SQL over
``double precision[]``), one with it (exact, by ``<=>``), and one with it and the HNSW index of
``manage.py knowledge_index 256``, searched with pgvector's default candidate list (40) and
with ``hnsw.ef_search = 200``. The HNSW paths also report their recall@10 against the exact
answer, and the index its build time. The paths take the same queries, near the clusters, in
alternating rounds; a round's value is the median of its queries.

pgvector comes from ``DATABASE_URL``'s server when it has the extension; else from a wheel's
PostgreSQL started for the scenario (``benchmarks.pgvector_server``; pgvector 0.8 when
``make install`` put it there). Each record's note names the server and pgvector that answered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import statistics
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from urllib.parse import parse_qs, urlparse

import psycopg
from psycopg.conninfo import make_conninfo

from benchmarks.common import Options, Record, not_run, summarize
from benchmarks.pgvector_server import PgvectorServer, binaries, django_alias

DIMENSIONS = 256
K = 10
CLUSTERS = 64  # real embeddings cluster by topic; uniform noise is HNSW's worst case, not a user's
NOISE = 1.0  # an item's spread around its topic: as wide as the topics' own spread
PLAIN = "exact cosine in SQL (no pgvector)"
OWNERS = ("user:1", "user:2")
EXACT, HNSW, HNSW_200 = "pgvector <=>, exact", "pgvector HNSW index", "pgvector HNSW, ef_search 200"
SYSTEMS = {  # system -> its database (and Django alias), and hnsw.ef_search if not the default
    PLAIN: ("bench_knowledge_plain", None),
    EXACT: ("bench_knowledge_vector", None),
    HNSW: ("bench_knowledge_hnsw", None),
    HNSW_200: ("bench_knowledge_hnsw", 200),  # the same index, a 5x longer candidate list
}
DATABASES = list(dict.fromkeys(db for db, _ in SYSTEMS.values()))


def _has_pgvector(url: str) -> bool:
    try:
        with psycopg.connect(_dsn(url), connect_timeout=3) as c:
            return (
                c.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone()
                is not None
            )
    except psycopg.OperationalError:
        return False


def _params(url: str, dbname: str | None = None) -> dict[str, str]:
    """Host (a socket directory, given as ?host=, wins), port, user, password and database."""
    pg = urlparse(url)
    socket_dir = parse_qs(pg.query).get("host", [""])[0]
    return {
        "host": socket_dir or pg.hostname or "127.0.0.1",
        "port": str(pg.port or 5432),
        "user": pg.username or "postgres",
        "password": pg.password or "",
        "dbname": dbname or (pg.path or "/postgres").lstrip("/") or "postgres",
    }


def _dsn(url: str, dbname: str | None = None) -> str:
    return make_conninfo("", **{k: v for k, v in _params(url, dbname).items() if v})


@contextmanager
def pgvector_url(opts: Options) -> Iterator[str | None]:
    """A server with pgvector: DATABASE_URL's, else one of our own (the newest pgvector installed);
    None when there is none."""
    if _has_pgvector(opts.database_url):
        yield opts.database_url
        return
    version = next((v for v in ("0.8", "0.6") if binaries(v) is not None), None)
    if version is None:
        yield None
        return
    server = PgvectorServer(pgvector=version)
    try:
        server.start()
        yield server.url
    finally:
        server.stop()


def fill(url: str, items_per_owner: int, centers: list[list[float]]) -> None:
    """Fresh databases (their aliases registered) holding the same items, generated in SQL:
    loading is not measured."""
    from django.db import connections

    from agentstream.django_app.models import KnowledgeItem

    with psycopg.connect(_dsn(url), autocommit=True) as admin:
        for name in DATABASES:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            admin.execute(f"CREATE DATABASE {name}")
    for name in DATABASES:
        connection = connections[name]
        with connection.schema_editor() as editor:
            editor.create_model(KnowledgeItem)
        with connection.cursor() as cursor:
            if name != SYSTEMS[PLAIN][0]:
                cursor.execute("CREATE EXTENSION vector")
            cursor.execute("CREATE TEMP TABLE centers (c int, e double precision[])")
            cursor.executemany("INSERT INTO centers VALUES (%s, %s)", list(enumerate(centers)))
            cursor.execute("SELECT setseed(0.5)")  # the same items in every database
            for owner in OWNERS:
                cursor.execute(
                    f"INSERT INTO agentstream_knowledge (item_id, owner, deleted, version_us, version_run, "
                    f"version_seq, updated_at, kind, text, metadata, embedding, embedding_norm, dimensions) "
                    f"SELECT 'i' || g, %s, false, 1, 'bench', g, now(), 'fact', '', '{{}}', e, "
                    f"sqrt((SELECT sum(x * x) FROM unnest(e) x)), {DIMENSIONS} FROM ("
                    f"  SELECT g, ARRAY(SELECT x + {NOISE} * (random() - 0.5) FROM unnest(c.e) x WHERE g > 0) AS e"
                    f"  FROM generate_series(1, %s) g JOIN centers c ON c.c = g %% {len(centers)} ORDER BY g) s",
                    [owner, items_per_owner],
                )
            cursor.execute("VACUUM ANALYZE agentstream_knowledge")


def near(rng: random.Random, centers: list[list[float]]) -> list[float]:
    """A point of one of the clusters, as the items are made."""
    center = rng.choice(centers)
    return [x + NOISE * (rng.random() - 0.5) for x in center]


def build_index() -> float:
    """Build the HNSW index (the command's code path); seconds it took."""
    from django.db import connections

    from agentstream.projections.similarity import build_index as build

    start = time.perf_counter()
    build(connections[SYSTEMS[HNSW][0]], DIMENSIONS)
    return time.perf_counter() - start


def search_ms(alias: str, ef_search: int | None, queries: list[list[float]]) -> tuple[float, list[list[str]]]:
    """The median latency of these searches (ms), and their answers."""
    from django.db import connections

    from agentstream.projections.similarity import search_knowledge

    connection = connections[alias]
    with connection.cursor() as cursor:  # as an operator would: ALTER DATABASE .. SET hnsw.ef_search
        cursor.execute(f"SET hnsw.ef_search = {ef_search}" if ef_search else "RESET hnsw.ef_search")
    times, answers = [], []
    for query in queries:
        start = time.perf_counter()
        hits = search_knowledge(connection, OWNERS[0], query, k=K)
        times.append((time.perf_counter() - start) * 1000)
        answers.append([h.item_id for h in hits])
    return statistics.median(times), answers


def server_of(alias: str) -> str:
    """Which PostgreSQL and pgvector answered (the wheels' servers differ from DATABASE_URL's)."""
    from django.db import connections

    from agentstream.projections.similarity import pgvector

    connection = connections[alias]
    found = pgvector(connection)
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        (version,) = cursor.fetchone()
    return f"PostgreSQL {str(version).split()[0]}, pgvector {found.version if found else '-'}"


def recall(found: list[list[str]], truth: list[list[str]]) -> float:
    return statistics.mean(len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True))


async def main(opts: Options) -> list[Record]:
    from benchmarks.django_env import configure

    n = opts.size(full=20_000, quick=1_000)
    with pgvector_url(opts) as url:
        if url is None:
            reason = "no PostgreSQL with pgvector: install pgvector, or the pgserver wheel (pip install -e '.[dev]')"
            return [not_run("knowledge", s, "search latency", "ms", n, reason) for s in SYSTEMS]
        await asyncio.to_thread(configure, opts.database_url)
        return await asyncio.to_thread(_measure, url, n, opts)


def _measure(url: str, n: int, opts: Options) -> list[Record]:
    rng = random.Random(1)
    centers = [[rng.random() - 0.5 for _ in range(DIMENSIONS)] for _ in range(CLUSTERS)]
    with ExitStack() as aliases:
        for name in DATABASES:
            p = _params(url, name)
            aliases.enter_context(
                django_alias(
                    name, host=p["host"], port=p["port"], name=name, user=p["user"], password=p["password"]
                )
            )
        fill(url, n, centers)
        build_s = build_index()
        samples: dict[str, list[float]] = {s: [] for s in SYSTEMS}
        recalls: dict[str, list[float]] = {HNSW: [], HNSW_200: []}
        for _ in range(max(3, opts.rounds)):
            queries = [near(rng, centers) for _ in range(5 if opts.quick else 20)]
            answers: dict[str, list[list[str]]] = {}
            for system, (alias, ef_search) in SYSTEMS.items():
                ms, answers[system] = search_ms(alias, ef_search, queries)
                samples[system].append(ms)
            for system, found in recalls.items():
                found.append(recall(answers[system], answers[EXACT]))
        records = [
            *(summarize("knowledge", s, "search latency", "ms", n, v) for s, v in samples.items()),
            *(summarize("knowledge", s, "recall@10", "ratio", n, v) for s, v in recalls.items()),
            summarize("knowledge", HNSW, "index build", "s", n, [build_s]),
        ]
        return [dataclasses.replace(r, note=server_of(SYSTEMS[HNSW][0])) for r in records]
