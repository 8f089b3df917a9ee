"""Knowledge search on a PostgreSQL with pgvector (the session's own server, see benchmarks/pgvector_server.py):
the same ranking as the exact cosine, owner scoping, the fallback without the extension, and the
HNSW indexes of ``manage.py knowledge_index`` (used for a big owner, never cutting a result short)."""

from __future__ import annotations

import asyncio
import io
import logging
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from agentstream.consumers.stores import Match
from agentstream.core.errors import ConfigurationError
from agentstream.core.events import Event, EventType
from agentstream.core.ids import user_owner
from agentstream.core.records import StoreKind, check_embedding, cosine, store_payload
from agentstream.django_app.stores import DjangoStoreBackend
from agentstream.projections import similarity
from agentstream.projections.similarity import Hit, index_name, search_backend, search_knowledge
from agentstream.projections.stores import StoreWriter
from benchmarks.pgvector_server import PgvectorServer, django_alias
from tests.services import POSTGRES_UP, require

# Not django_db tests: the alias is the module's own (migrated once, emptied after each test), and
# a django_db test case would forbid queries to an alias it does not list.
pytestmark = pytest.mark.pgvector

ALIAS = "pgvector"
ALICE, BOB = user_owner(1), user_owner(2)


@pytest.fixture(scope="module")
def pgvector_db(pgvector_server: PgvectorServer, django_db_blocker: Any) -> Iterator[str]:
    """A Django database alias on the pgvector server, migrated like a user's database."""
    server = {"host": pgvector_server.host, "port": str(pgvector_server.port), "user": "postgres"}
    with django_alias(ALIAS, name="postgres", **server):
        with django_db_blocker.unblock():
            call_command("migrate", database=ALIAS, verbosity=0)
            with connections[ALIAS].cursor() as cursor:
                cursor.execute("CREATE EXTENSION IF NOT EXISTS vector")
        yield ALIAS


@pytest.fixture
def vdb(pgvector_db: str, django_db_blocker: Any) -> Iterator[BaseDatabaseWrapper]:
    connection = connections[pgvector_db]
    with django_db_blocker.unblock():
        yield connection
        _empty(connection)


def _empty(connection: BaseDatabaseWrapper) -> None:
    with connection.cursor() as cursor:
        cursor.execute("CREATE EXTENSION IF NOT EXISTS vector")
        cursor.execute(f"DELETE FROM {similarity.TABLE}")
        cursor.execute(
            "SELECT relname FROM pg_class WHERE relkind = 'i' AND relname LIKE %s",
            [similarity.INDEX_PREFIX + "%"],
        )
        for (name,) in cursor.fetchall():
            cursor.execute(f"DROP INDEX {name}")
    similarity.forget_pgvector(connection)


def item(owner: str, key: str, embedding: list[float], *, kind: str = "fact", deleted: bool = False) -> Event:
    if deleted:
        return Event(
            "r-del", 1, EventType.KNOWLEDGE_DELETED, store_payload(StoreKind.KNOWLEDGE, owner, key, 200)
        )
    payload = store_payload(StoreKind.KNOWLEDGE, owner, key, 100, text=key, kind=kind, metadata={},
                            embedding=embedding)  # fmt: skip
    return Event("r-add", 1, EventType.KNOWLEDGE_ADDED, payload)


def write(connection: BaseDatabaseWrapper, events: list[Event]) -> None:
    with transaction.atomic(using=connection.alias):
        StoreWriter(connection).apply(events)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {similarity.TABLE}")  # the planner's choice of index rests on it


def unit(rng: random.Random, n: int) -> list[float]:
    return [rng.gauss(0, 1) for _ in range(n)]


def exact(events: list[Event], owner: str, query: list[float], k: int, kind: str | None = None) -> list[str]:
    """The ranking by definition: cosine in Python over the owner's live items of that dimension."""
    live = {
        e.payload["item_id"]: e.payload
        for e in events
        if e.payload["owner"] == owner and e.type == EventType.KNOWLEDGE_ADDED
    }
    for e in events:
        if e.type == EventType.KNOWLEDGE_DELETED:
            live.pop(e.payload["item_id"], None)
    scored = [
        (score, key)
        for key, p in live.items()
        if (kind is None or p["kind"] == kind) and (score := cosine(p["embedding"], query)) is not None
    ]
    return [key for _, key in sorted(scored, key=lambda s: (-s[0], s[1]))[:k]]


Statement = tuple[str, Any]


def statements(
    connection: BaseDatabaseWrapper, action: Callable[[], list[Hit]]
) -> tuple[list[Hit], list[Statement]]:
    """What ``action`` returned, and the ranking statements it sent (with their parameters)."""
    ran: list[Statement] = []

    def spy(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if "ORDER BY distance" in sql:
            ran.append((sql, params))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(spy):
        return action(), ran


def plan(connection: BaseDatabaseWrapper, statement: Statement) -> str:
    """EXPLAIN of a statement the search sent."""
    sql, params = statement
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql, params)
        return "\n".join(row[0] for row in cursor.fetchall())


def test_pgvector_ranks_as_the_exact_cosine_over_the_owners_live_items_of_that_dimension(
    vdb: BaseDatabaseWrapper,
) -> None:
    rng = random.Random(7)
    events = [item(ALICE, f"a{i}", unit(rng, 8), kind="summary" if i % 3 == 0 else "fact") for i in range(60)]
    events += [item(BOB, f"b{i}", unit(rng, 8)) for i in range(60)]
    events += [item(ALICE, f"a3d{i}", unit(rng, 3)) for i in range(10)]
    events += [item(ALICE, f"a{i}", [], deleted=True) for i in range(0, 60, 7)]
    write(vdb, events)
    pg = similarity.pgvector(vdb)
    assert pg is not None and f"pgvector {pg.version}" in search_backend(vdb)
    for trial in range(5):
        query = unit(rng, 8)
        hits = search_knowledge(vdb, ALICE, query, k=10)
        assert [h.item_id for h in hits] == exact(events, ALICE, query, 10), trial
        for h in hits:
            truth = next(
                cosine(e.payload["embedding"], query) for e in events if e.payload["item_id"] == h.item_id
            )
            assert h.score == pytest.approx(truth, abs=1e-5)  # pgvector computes in float4
        summaries = search_knowledge(vdb, ALICE, query, k=4, kind="summary")
        assert [h.item_id for h in summaries] == exact(events, ALICE, query, 4, kind="summary")
    query3 = unit(rng, 3)
    assert [h.item_id for h in search_knowledge(vdb, ALICE, query3, k=20)] == exact(events, ALICE, query3, 20)
    # the norms check_embedding allows at its bounds stay finite and non-zero in pgvector's float4
    extremes = [
        item(BOB, f"x{i}", [x * scale for x in unit(rng, 8)]) for i, scale in enumerate([3e17, 1e-11] * 3)
    ]
    assert all(check_embedding(e.payload["embedding"]) for e in extremes)
    write(vdb, extremes)
    for query_x in ([x * 1e-11 for x in unit(rng, 8)], [x * 3e17 for x in unit(rng, 8)]):
        found = [h.item_id for h in search_knowledge(vdb, BOB, query_x, k=10)]
        assert found == exact(events + extremes, BOB, query_x, 10)
    huge = [item(BOB, f"h{i}", unit(rng, 16_001)) for i in range(3)]  # beyond pgvector's 16,000
    write(vdb, huge)
    query_huge = unit(rng, 16_001)
    assert [h.item_id for h in search_knowledge(vdb, BOB, query_huge, k=2)] == exact(huge, BOB, query_huge, 2)
    assert search_knowledge(vdb, user_owner(99), unit(rng, 8), k=5) == []
    assert search_knowledge(vdb, BOB, unit(rng, 5), k=5) == []  # no item of that dimension


def test_without_the_extension_the_exact_sql_path_answers_the_same_and_pgvector_is_picked_up_once_created(
    vdb: BaseDatabaseWrapper, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(similarity, "RECHECK_S", 0.0)  # no minute's wait for the re-check
    rng = random.Random(11)
    events = [item(ALICE, f"a{i}", unit(rng, 16)) for i in range(40)] + [item(BOB, "b", unit(rng, 16))]
    write(vdb, events)
    query = unit(rng, 16)
    with_pgvector = search_knowledge(vdb, ALICE, query, k=7)
    with vdb.cursor() as cursor:
        cursor.execute("DROP EXTENSION vector")
    assert "slow; CREATE EXTENSION vector" in search_backend(vdb)
    without = search_knowledge(vdb, ALICE, query, k=7)
    assert (
        [h.item_id for h in without] == [h.item_id for h in with_pgvector] == exact(events, ALICE, query, 7)
    )
    assert [h.score for h in without] == pytest.approx([h.score for h in with_pgvector], abs=1e-5)
    with vdb.cursor() as cursor:  # off the search_path, as managed services install extensions
        cursor.execute("CREATE SCHEMA IF NOT EXISTS extensions")
        cursor.execute("CREATE EXTENSION vector SCHEMA extensions")
    assert "pgvector" in search_backend(vdb)  # the same connection, no restart
    again = search_knowledge(vdb, ALICE, query, k=7)
    assert [h.item_id for h in again] == [h.item_id for h in with_pgvector]
    with vdb.cursor() as cursor:
        cursor.execute("DROP EXTENSION vector")
        cursor.execute("CREATE EXTENSION vector")


def test_the_workers_store_backend_ranks_with_pgvector_and_logs_the_path_once(
    vdb: BaseDatabaseWrapper, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(5)
    events = [item(ALICE, f"a{i}", unit(rng, 8)) for i in range(20)] + [item(BOB, "b", unit(rng, 8))]
    write(vdb, events)
    query = unit(rng, 8)
    backend = DjangoStoreBackend(database=ALIAS)  # as `runagent` injects it: a thread of its own

    async def twice() -> list[Match]:
        await backend.search(ALICE, query, k=3)
        return await backend.search(ALICE, query, k=3)

    try:
        with caplog.at_level(logging.INFO, logger="agentstream.worker"):
            matches = asyncio.run(twice())
    finally:
        backend.close()
    assert [m.record.key for m in matches] == exact(events, ALICE, query, 3)
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("knowledge search:")]
    assert len(logged) == 1 and "pgvector" in logged[0]


def test_an_hnsw_index_serves_a_big_owner_and_a_filtered_scan_that_comes_back_short_is_run_exactly(
    vdb: BaseDatabaseWrapper,
) -> None:
    rng = random.Random(3)
    big = [item(ALICE, f"a{i}", unit(rng, 16), kind="rare" if i % 20 == 0 else "fact") for i in range(4000)]
    small = [item(BOB, f"b{i}", unit(rng, 16)) for i in range(6)]
    write(vdb, big + small)
    call_command("knowledge_index", "16", database=ALIAS, verbosity=0, stdout=io.StringIO())
    assert "HNSW indexes for dimensions: 16" in search_backend(vdb)
    query = unit(rng, 16)
    pg = similarity.pgvector(vdb)
    assert pg is not None

    vdb.close()  # a fresh connection has not loaded pgvector's library: its settings are unknown
    hits, ran = statements(vdb, lambda: search_knowledge(vdb, ALICE, query, k=10))
    assert len(ran) == 1 and index_name(16) in plan(vdb, ran[0])  # one pass, through the index
    truth = exact(big, ALICE, query, 10)
    assert len(hits) == 10 and all(h.item_id.startswith("a") for h in hits)
    assert len({h.item_id for h in hits} & set(truth)) >= 8  # approximate, high recall

    # 1 item in 20 is "rare": the planner still walks the index, whose 40 candidates hold ~2 of them
    vdb.close()
    rare, ran = statements(vdb, lambda: search_knowledge(vdb, ALICE, query, k=10, kind="rare"))
    assert index_name(16) in plan(vdb, ran[0])
    truth_rare = exact(big, ALICE, query, 10, kind="rare")
    if pg.iterative_scans:  # 0.8+: the index is walked on until 10 rare items passed the filter
        assert len(ran) == 1
        assert len(rare) == 10 and len({h.item_id for h in rare} & set(truth_rare)) >= 8
    else:  # came back short, then ranked exactly
        assert len(ran) == 2 and index_name(16) not in plan(vdb, ran[1])
        assert [h.item_id for h in rare] == truth_rare

    assert [h.item_id for h in search_knowledge(vdb, BOB, query, k=10)] == exact(small, BOB, query, 10)
    wide = search_knowledge(vdb, ALICE, query, k=300)  # more than the default candidate list (40)
    assert len(wide) == 300 and len({h.item_id for h in wide} & set(exact(big, ALICE, query, 300))) >= 270

    with vdb.cursor() as cursor:  # the operator's larger candidate list is kept, not lowered to k
        cursor.execute("SET hnsw.ef_search = 1000")
    try:  # 1,000 candidates hold ~50 rare items: k of them in one pass
        rare, ran = statements(vdb, lambda: search_knowledge(vdb, ALICE, query, k=10, kind="rare"))
        assert len(rare) == 10 and len(ran) == 1
    finally:
        with vdb.cursor() as cursor:
            cursor.execute("RESET hnsw.ef_search")

    def settings() -> tuple[str, ...]:
        names = ["hnsw.ef_search", *(["hnsw.iterative_scan"] if pg.iterative_scans else [])]
        with vdb.cursor() as cursor:
            cursor.execute("SELECT " + ", ".join(f"current_setting('{n}')" for n in names))
            return tuple(cursor.fetchone())

    with transaction.atomic(using=vdb.alias):  # a caller's transaction keeps its own settings
        before = settings()
        assert len(search_knowledge(vdb, ALICE, query, k=300)) == 300
        assert settings() == before


def test_knowledge_index_builds_lists_and_drops_and_refuses_what_it_cannot_do_in_one_line(
    vdb: BaseDatabaseWrapper,
) -> None:
    out = _command("1536", "8")
    assert f"{index_name(1536)}: HNSW cosine index for 1536 dimensions" in out
    assert "HNSW indexes for dimensions: 8, 1536" in out
    assert "HNSW indexes for dimensions: 8, 1536" in _command()  # idempotent, and lists
    assert _command("1536", "8", "--drop").splitlines()[:2] == ["dropped index for 1536 dimensions",
                                                                 "dropped index for 8 dimensions"]  # fmt: skip
    assert "no index for 8 dimensions" in _command("8", "--drop")

    _command("8")  # a CONCURRENTLY build that failed half-way leaves an invalid index behind
    with vdb.cursor() as cursor:
        cursor.execute(
            "UPDATE pg_index SET indisvalid = false WHERE indexrelid = %s::regclass", [index_name(8)]
        )
    assert "HNSW indexes for dimensions: none" in _command()  # an invalid index serves no search
    assert "HNSW indexes for dimensions: 8" in _command("8")  # dropped and built again
    with vdb.cursor() as cursor:
        cursor.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = %s::regclass", [index_name(8)])
        assert cursor.fetchone() == (True,)
    for bad in ("0", "2001"):
        with pytest.raises(CommandError, match=r"pgvector indexes 1\.\.2000 dimensions, not"):
            _command(bad)
        with pytest.raises(CommandError, match=r"pgvector indexes 1\.\.2000 dimensions, not"):
            _command(bad, "--drop")
    with pytest.raises(CommandError, match=r"m=1, ef_construction=64: pgvector takes m 2\.\.100"):
        _command("8", "--m", "1")
    with pytest.raises(CommandError, match=r"ef_construction from 2\*m"):
        _command("8", "--m", "40")
    with pytest.raises(CommandError, match=r"exists with m=16, ef_construction=64; drop it first \(--drop\)"):
        _command("8", "--m", "24")  # a different index under the same name is not kept silently
    with (
        transaction.atomic(using=ALIAS),
        pytest.raises(ConfigurationError, match="cannot run in a transaction"),
    ):
        similarity.build_index(vdb, 8)
    assert "dropped index for 8 dimensions" in _command("8", "--drop")
    _command("8", "--m", "24", "--ef-construction", "100")
    with vdb.cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE oid = to_regclass(%s)", [index_name(8)])
        assert sorted(cursor.fetchone()[0]) == ["ef_construction=100", "m=24"]


@pytest.mark.django_db(databases=["default", "embedded"], transaction=True)  # CONCURRENTLY: no transaction
def test_knowledge_index_without_pgvector_on_the_server_or_on_sqlite_says_what_to_do() -> None:
    with pytest.raises(CommandError, match="always searches exactly"):
        call_command("knowledge_index", "8", database="embedded", stdout=io.StringIO())
    require("PostgreSQL", POSTGRES_UP)
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
        if cursor.fetchone() is not None:
            pytest.skip("the default PostgreSQL has pgvector (CI's PostgreSQL 15 from Debian has none)")
    with pytest.raises(CommandError, match="pgvector is not installed on this PostgreSQL server"):
        call_command("knowledge_index", "8", stdout=io.StringIO())


def _command(*args: str) -> str:
    out = io.StringIO()
    call_command("knowledge_index", *args, database=ALIAS, stdout=out)
    return str(out.getvalue())
