"""The store's atomic steps on every store (memory, Redis, the memory store lent over its socket): a
change with its effects lands whole or is tried again."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from core.kv import Admission, KeyValue, Transaction
from core.kv_memory import MemoryKeyValue
from core.kv_shared import SharedKeyValue, StoreServer
from tests.core.test_jobs import STORES, redis_for_records, store_of  # noqa: F401 - the fixture


@pytest.fixture(params=STORES)
def kv(request, redis_for_records) -> Iterator[KeyValue]:  # noqa: F811
    with store_of(request.param, redis_for_records) as store:
        yield store


def test_a_lent_store_tells_its_own_listeners_and_refuses_unknown_calls():
    """The job process's writes publish the end to the API's waiters, who listen on the API's store;
    the socket serves the store's calls only, and only to a peer holding the key."""
    store = MemoryKeyValue()
    heard: list[str] = []
    store.listen("ended", heard.append)
    server = StoreServer(store, lambda role, connection: connection.close())
    shared = SharedKeyValue(server.address, server.authkey)
    try:
        shared.transact("doc", lambda doc, now: ({"n": 1}, None), 60, lambda outcome, doc: [("publish", "ended", "j1")])
        assert heard == ["j1"] and store.get("doc") == b'{"n": 1}'
        with pytest.raises(ValueError, match="no call 'close'"):
            shared._call("close")
        with pytest.raises(ConnectionError):
            SharedKeyValue(server.address, b"another key").get("doc")
        assert shared.get("doc") == b'{"n": 1}', "the connection still serves after a refused call"
        for _ in range(20):  # short-lived threads, as a batch's lease keeper: their connections are reused
            thread = threading.Thread(target=shared.get, args=("doc",))
            thread.start()
            thread.join()
        serving = [thread for thread in threading.enumerate() if thread.name == "xai-store"]
        assert len(serving) <= 2, f"{len(serving)} connections held for 20 threads that ended"
    finally:
        shared.close()
        server.close()


def test_concurrent_changes_each_land_once_with_their_effects(kv):
    """Two threads increment one document 150 times each; every increment also bumps a counter and
    indexes a member. A lost update or an effect applied for a change that did not land would show."""

    def increment(record, now):
        count = 0 if record is None else record["count"]
        return {"count": count + 1}, count + 1

    def effects(count, record):
        return [("add", "counters", "changes", 1), ("index", "seen", f"m{count}", float(count))]

    def work() -> None:
        for _ in range(150):
            kv.transact("doc", increment, 60, effects)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert kv.transact("doc", lambda record, now: (None, record["count"]), 60) == 300
    assert kv.fields("counters") == {"changes": 300.0}
    assert sorted(kv.below("seen", 1e9), key=lambda m: int(m[1:])) == [f"m{n}" for n in range(1, 301)]


def test_effects_of_a_change_that_writes_nothing_still_apply_and_none_without_effects(kv):
    kv.transact("doc", lambda record, now: (None, "kept"), 60, lambda outcome, record: [("put", "side", b"x", 60)])
    assert kv.get("doc") is None and kv.get("side") == b"x"
    kv.apply([("put", "a", b"1", 60), ("push", "list", "j1", 60), ("push", "list", "j2", 60), ("delete", "side")])
    assert kv.get_many(["a", "side", "missing"]) == [b"1", None, None]
    assert kv.pop("list", 5) == ["j1", "j2"]


def test_a_new_document_gets_the_ttl_and_a_changed_one_keeps_it(kv):
    kv.transact("doc", lambda record, now: ({"v": 1}, None), 0.3)
    kv.transact("doc", lambda record, now: ({"v": 2}, None), 3600)  # keeps 0.3 s
    assert kv.transact("doc", lambda record, now: (None, record), 60) == {"v": 2}
    threading.Event().wait(0.6)
    assert kv.get("doc") is None


def test_many_transactions_in_one_pass_each_land_once_under_contention(kv):
    """transact_many over 20 documents from two threads at once: every document ends at 2 x 25, and
    the outcomes come back in the order of the transactions."""
    keys = [f"doc{index}" for index in range(20)]

    def increment(record, now):
        count = 0 if record is None else record["count"]
        return {"count": count + 1}, count + 1

    seen: list[list[int]] = []

    def work() -> None:
        for _ in range(25):
            seen.append(kv.transact_many([Transaction(key, increment, 60) for key in keys]))

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    final = kv.transact_many([Transaction(key, lambda record, now: (None, record["count"]), 60) for key in keys])
    assert final == [50] * 20
    assert all(len(outcomes) == 20 for outcomes in seen)
    assert sorted(outcomes[0] for outcomes in seen) == list(range(1, 51)), "each pass saw its own increment"


def test_admissions_and_their_effects_land_together_or_not_at_all(kv):
    """Each admission takes a place while its set has room; the first one refused keeps nothing: not the
    places taken before it in the same step, not the effects."""
    effects = [("put", "doc", b"written", 60)]
    for member in ("a", "b"):
        assert (
            kv.apply_if_admitted([Admission("quota", member, 5, 600), Admission("queue", member, 2, 600)], []) is None
        )
    assert kv.apply_if_admitted([Admission("quota", "c", 5, 600), Admission("queue", "c", 2, 600)], effects) == 1
    assert kv.get("doc") is None, "refused: no effect applied"
    assert kv.apply_if_admitted([Admission("quota", "c", 2, 600)], effects) == 0
    assert kv.apply_if_admitted([Admission("quota", "c", 3, 600)], effects) is None, "c's place was given back"
    assert kv.get("doc") == b"written"
    assert sorted(kv.below("quota", float("inf"))) == ["a", "b", "c"]
    assert sorted(kv.below("queue", float("inf"))) == ["a", "b"]


def test_members_older_than_their_max_age_give_their_place_up(kv):
    """A member whose job expired without an end stops counting after max_age_s."""
    assert kv.apply_if_admitted([Admission("queue", "old", 1, 0.05)], []) is None
    assert kv.apply_if_admitted([Admission("queue", "new", 1, 600)], []) == 0, "not stale for this caller"
    time.sleep(0.1)
    assert kv.apply_if_admitted([Admission("queue", "new", 1, 0.05)], []) is None
    assert kv.below("queue", float("inf")) == ["new"]
