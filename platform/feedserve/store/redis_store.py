"""Redis implementations of the feature store, event log and embedding log.

This is the only module in the code base that talks to Redis. Every key lives under
``{prefix}:``::

    {prefix}:member:{id}        string   Member JSON
    {prefix}:post:{id}          string   Post JSON
    {prefix}:recent             zset     post -> created_at
    {prefix}:author:{id}        zset     post -> created_at (posts by one author)
    {prefix}:pop                zset     post -> popularity score (sum of ENGAGEMENT_WEIGHTS)
    {prefix}:cnt:{kind}         hash     post id -> counter (views, likes, comments, shares)
    {prefix}:hist:{member_id}   list     packed HISTORY_DTYPE records, oldest first
    {prefix}:post_id_seq        string   last allocated post id (INCR)
    {prefix}:evt:{event_id}     string   "applied" marker, expires after 7 days
    {prefix}:events             stream   engagement events (consumer group "featurizers")
    {prefix}:post_embeddings    stream   nearline post embeddings

Sorted-set members are post ids zero-padded to 19 digits, so that Redis's tie-break among
equal scores (reverse lexicographic in ZREVRANGE) is "larger id first", the same order the
in-memory store uses.

Clients must be created with ``decode_responses=False`` (the default): histories and
embeddings are binary.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import redis

from feedserve.contracts import ACTION_TO_COUNT, COUNT_KINDS, EngagementCounts, Member, Post
from feedserve.store.base import (
    ENGAGEMENT_WEIGHTS,
    HISTORY_DTYPE,
    EmbeddingRecord,
    EngagementEvent,
    MemberView,
    StoredVector,
    empty_history,
)
from feedserve.store.memory import EVENT_DEDUP_TTL_S, pack_event, plan_bulk_load

UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)
"""What Redis raises when it cannot be reached; the gateway maps these to HTTP 503."""


def redis_answers(url: str, timeout_s: float = 0.5) -> bool:
    """True when a Redis server answers PING at ``url``."""
    try:
        client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        return bool(client.ping())
    except (redis.exceptions.RedisError, OSError):
        return False


RedisClient = redis.Redis
"""The synchronous redis-py client type used throughout (bytes responses)."""

_BATCH = 1000
_ID_WIDTH = 19  # MAX_ID = 2**62 has 19 decimal digits

_CLIENTS: dict[str, RedisClient] = {}
_CLIENTS_LOCK = threading.Lock()


def client_for(url: str) -> RedisClient:
    """A process-wide client (one connection pool) per URL. redis-py pools are thread-safe
    and reset themselves in a forked child."""
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(url)
        if client is None:
            client = redis.Redis.from_url(url, decode_responses=False)
            _CLIENTS[url] = client
        return client


def _client(client_or_url: RedisClient | str) -> RedisClient:
    client = client_for(client_or_url) if isinstance(client_or_url, str) else client_or_url
    if client.get_connection_kwargs().get("decode_responses"):
        raise ValueError("the Redis client must use decode_responses=False (binary values)")
    return client


def _member(post_id: int) -> bytes:
    return f"{post_id:0{_ID_WIDTH}d}".encode()


def _chunks(items: Sequence[Any], n: int = _BATCH) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _history(raw: Sequence[bytes]) -> np.ndarray:
    """A history list's packed entries as one ``HISTORY_DTYPE`` array."""
    if not raw:
        return empty_history()
    return np.frombuffer(b"".join(raw), dtype=HISTORY_DTYPE).copy()


def _escape_glob(s: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)


# KEYS[1] marker, KEYS[2] history list, KEYS[3] counter hash, KEYS[4] popularity zset
# ARGV[1] marker ttl (s), ARGV[2] packed history record, ARGV[3] history_max_len,
# ARGV[4] counter field (post id) or "" for no counter, ARGV[5] popularity increment,
# ARGV[6] popularity member
_APPLY_EVENT_LUA = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
    return 0
end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1)
if ARGV[4] ~= '' then
    redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
end
if tonumber(ARGV[5]) ~= 0 then
    redis.call('ZINCRBY', KEYS[4], ARGV[5], ARGV[6])
end
return 1
"""

# Raise the post id counter to at least ARGV[1]. Ids are compared as decimal strings (Lua
# numbers are doubles and cannot hold every 63-bit id exactly).
_RAISE_SEQ_LUA = """
local cur = redis.call('GET', KEYS[1]) or '0'
local want = ARGV[1]
if #want > #cur or (#want == #cur and want > cur) then
    redis.call('SET', KEYS[1], want)
end
return 1
"""

# The newest ARGV[1] posts over several authors' post sets (KEYS), merged server-side: one
# round trip that returns ARGV[1] ids instead of every author's newest ARGV[1] with scores.
# Same order as the in-memory store: created_at, then the (zero-padded) id, descending.
_POSTS_BY_AUTHORS_LUA = """
local limit = tonumber(ARGV[1])
local all = {}
for _, key in ipairs(KEYS) do
    local flat = redis.call('ZREVRANGE', key, 0, limit - 1, 'WITHSCORES')
    for i = 1, #flat, 2 do
        all[#all + 1] = {flat[i], tonumber(flat[i + 1])}
    end
end
table.sort(all, function(a, b)
    if a[2] ~= b[2] then return a[2] > b[2] end
    return a[1] > b[1]
end)
local out = {}
for i = 1, math.min(limit, #all) do out[i] = all[i][1] end
return out
"""

# XACK then XDEL each acknowledged entry (only those that were pending in the group).
_ACK_LUA = """
local n = 0
for i = 2, #ARGV do
    if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
        redis.call('XDEL', KEYS[1], ARGV[i])
        n = n + 1
    end
end
return n
"""


class RedisFeatureStore:
    """The feature store on Redis (key layout in the module docstring).

    ``apply_events`` idempotency: each event runs one Lua script that sets the marker
    ``{prefix}:evt:{event_id}`` with ``SET NX EX 7d`` and, only if it was not there, appends
    to the history (RPUSH + LTRIM), bumps the counter (HINCRBY) and the popularity (ZINCRBY).
    A script runs atomically, so concurrent duplicate submissions apply an event exactly once
    and no crash can leave a marker without its writes (the "marker first, then MULTI"
    alternative could lose an event if the client died between the two). The scripts for a
    batch travel in one pipeline: one round trip per call, not per event.
    """

    def __init__(
        self,
        client_or_url: RedisClient | str,
        prefix: str = "fs",
        history_max_len: int = 1024,
    ) -> None:
        if history_max_len < 1:
            raise ValueError("history_max_len must be >= 1")
        if not prefix:
            raise ValueError("prefix must not be empty")
        self.client = _client(client_or_url)
        self.prefix = prefix
        self.history_max_len = history_max_len
        self._apply_event = self.client.register_script(_APPLY_EVENT_LUA)
        self._raise_seq = self.client.register_script(_RAISE_SEQ_LUA)
        self._posts_by_authors = self.client.register_script(_POSTS_BY_AUTHORS_LUA)

    # --- keys --------------------------------------------------------------------------------
    def _k(self, *parts: object) -> str:
        return ":".join([self.prefix, *(str(p) for p in parts)])

    @property
    def _seq_key(self) -> str:
        return self._k("post_id_seq")

    # --- admin -------------------------------------------------------------------------------
    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def clear(self) -> None:
        """UNLINK every key under ``{prefix}:`` (SCAN; other prefixes are not touched)."""
        pattern = _escape_glob(self.prefix) + ":*"
        batch: list[bytes] = []
        for key in self.client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= _BATCH:
                self.client.unlink(*batch)
                batch = []
        if batch:
            self.client.unlink(*batch)

    # --- members -----------------------------------------------------------------------------
    def put_members(self, members: Iterable[Member]) -> None:
        items = list(members)
        for chunk in _chunks(items):
            self.client.mset({self._k("member", m.member_id): m.model_dump_json() for m in chunk})

    def get_member(self, member_id: int) -> Member | None:
        return self.get_members([member_id])[0]

    def member_view(self, member_id: int, popular: int, fresh: int) -> MemberView:
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self._k("member", member_id))
        pipe.lrange(self._k("hist", member_id), 0, -1)
        for key, limit in (("pop", popular), ("recent", fresh)):
            if limit > 0:  # a stop of -1 would read the whole set
                pipe.zrevrange(self._k(key), 0, limit - 1)
        member, history, *ranked = pipe.execute()
        lists = iter(ranked)
        pop = [int(m) for m in next(lists)] if popular > 0 else []
        recent = [int(m) for m in next(lists)] if fresh > 0 else []
        return MemberView(
            None if member is None else Member.model_validate_json(member),
            _history(history),
            pop,
            recent,
        )

    def member_ids(self) -> list[int]:
        """SCAN over ``{prefix}:member:*`` (no index to keep in step)."""
        head = len(self._k("member", ""))
        pattern = _escape_glob(self._k("member", "")) + "*"
        return sorted(int(k[head:]) for k in self.client.scan_iter(match=pattern, count=1000))

    def get_members(self, member_ids: Sequence[int]) -> list[Member | None]:
        out: list[Member | None] = []
        for chunk in _chunks(list(member_ids)):
            raw = self.client.mget([self._k("member", i) for i in chunk])
            out.extend(None if r is None else Member.model_validate_json(r) for r in raw)
        return out

    # --- posts -------------------------------------------------------------------------------
    def put_posts(self, posts: Iterable[Post]) -> None:
        items = list(posts)
        if not items:
            return
        for chunk in _chunks(items):
            old = self.get_posts([p.post_id for p in chunk])
            pipe = self.client.pipeline(transaction=False)
            pipe.mset({self._k("post", p.post_id): p.model_dump_json() for p in chunk})
            pipe.zadd(self._k("recent"), {_member(p.post_id): p.created_at for p in chunk})
            for p, o in zip(chunk, old, strict=True):
                if o is not None and o.author_id != p.author_id:
                    pipe.zrem(self._k("author", o.author_id), _member(o.post_id))
                pipe.zadd(self._k("author", p.author_id), {_member(p.post_id): p.created_at})
            pipe.execute()
        self._raise_seq(keys=[self._seq_key], args=[str(max(p.post_id for p in items))])

    def get_posts(self, post_ids: Sequence[int]) -> list[Post | None]:
        out: list[Post | None] = []
        for chunk in _chunks(list(post_ids)):
            raw = self.client.mget([self._k("post", i) for i in chunk])
            out.extend(None if r is None else Post.model_validate_json(r) for r in raw)
        return out

    def delete_posts(self, post_ids: Sequence[int]) -> int:
        ids = list(dict.fromkeys(post_ids))
        if not ids:
            return 0
        existing = [p for p in self.get_posts(ids) if p is not None]
        for found in _chunks(existing):
            members = [_member(p.post_id) for p in found]
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(*[self._k("post", p.post_id) for p in found])
            pipe.zrem(self._k("recent"), *members)
            pipe.zrem(self._k("pop"), *members)
            for p in found:
                pipe.zrem(self._k("author", p.author_id), _member(p.post_id))
            for kind in COUNT_KINDS:
                pipe.hdel(self._k("cnt", kind), *[str(p.post_id) for p in found])
            pipe.execute()
        return len(existing)

    def allocate_post_id(self) -> int:
        return int(self.client.incr(self._seq_key))

    def recent_posts(self, limit: int) -> list[int]:
        if limit <= 0:
            return []
        return [int(m) for m in self.client.zrevrange(self._k("recent"), 0, limit - 1)]

    def posts_by_authors(self, author_ids: Sequence[int], limit: int) -> list[int]:
        if limit <= 0 or not author_ids:
            return []
        keys = [self._k("author", a) for a in dict.fromkeys(author_ids)]
        return [int(m) for m in self._posts_by_authors(keys=keys, args=[limit])]

    def popular_posts(self, limit: int) -> list[int]:
        if limit <= 0:
            return []
        return [int(m) for m in self.client.zrevrange(self._k("pop"), 0, limit - 1)]

    def get_counts(self, post_ids: Sequence[int]) -> list[EngagementCounts]:
        ids = list(post_ids)
        if not ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for kind in COUNT_KINDS:
            pipe.hmget(self._k("cnt", kind), [str(i) for i in ids])
        cols: list[list[bytes | None]] = pipe.execute()
        return [
            EngagementCounts(
                **{kind: int(col[j] or 0) for kind, col in zip(COUNT_KINDS, cols, strict=True)}
            )
            for j in range(len(ids))
        ]

    # --- histories and events ----------------------------------------------------------------
    def get_history(self, member_id: int, limit: int | None = None) -> np.ndarray:
        if limit is not None and limit <= 0:
            return empty_history()
        start = 0 if limit is None else -limit
        raw: list[bytes] = self.client.lrange(self._k("hist", member_id), start, -1)
        return _history(raw)

    def apply_events(self, events: Sequence[EngagementEvent]) -> int:
        """Apply new events; idempotent by ``event_id`` for 7 days (see the class docstring)."""
        if not events:
            return 0
        pipe = self.client.pipeline(transaction=False)
        ttl = str(EVENT_DEDUP_TTL_S)
        max_len = str(self.history_max_len)
        for ev in events:
            kind = ACTION_TO_COUNT.get(ev.action)
            self._apply_event(
                keys=[
                    self._k("evt", ev.event_id),
                    self._k("hist", ev.member_id),
                    self._k("cnt", kind or COUNT_KINDS[0]),
                    self._k("pop"),
                ],
                args=[
                    ttl,
                    pack_event(ev).tobytes(),
                    max_len,
                    "" if kind is None else str(ev.post_id),
                    repr(ENGAGEMENT_WEIGHTS[ev.action]),
                    _member(ev.post_id),
                ],
                client=pipe,
            )
        return sum(int(r) for r in pipe.execute())

    # --- materialized vectors ------------------------------------------------------------------
    def put_vectors(self, table: str, vectors: Sequence[StoredVector]) -> None:
        """One hash per table (``{prefix}:vec:{table}``): key -> updated_at, space, float32s."""
        for chunk in _chunks(list(vectors)):
            self.client.hset(
                self._k("vec", table), mapping={str(int(v.key)): _pack_vector(v) for v in chunk}
            )

    def get_vectors(self, table: str, keys: Sequence[int]) -> list[StoredVector | None]:
        ids = [int(k) for k in keys]
        if not ids:
            return []
        raw: list[bytes | None] = self.client.hmget(self._k("vec", table), [str(k) for k in ids])
        return [None if r is None else _unpack_vector(k, r) for k, r in zip(ids, raw, strict=True)]

    def vector_count(self, table: str) -> int:
        return int(self.client.hlen(self._k("vec", table)))

    def bulk_load(
        self, members: Iterable[Member], posts: Iterable[Post], interactions: np.ndarray
    ) -> None:
        """Pipelined, batched writes; no idempotency markers. Same result as applying the
        interactions with ``apply_events`` in ``ts`` order."""
        plan = plan_bulk_load(interactions, self.history_max_len)
        self.put_members(members)
        self.put_posts(posts)
        pipe = self.client.pipeline(transaction=False)
        queued = 0

        def flush_if_full(n: int) -> None:
            nonlocal queued
            queued += n
            if queued >= 20_000:
                pipe.execute()
                queued = 0

        itemsize = HISTORY_DTYPE.itemsize
        for member_id, recs in plan.histories:
            buf = recs.tobytes()
            values = [buf[i : i + itemsize] for i in range(0, len(buf), itemsize)]
            key = self._k("hist", member_id)
            for chunk in _chunks(values, 5000):
                pipe.rpush(key, *chunk)
            pipe.ltrim(key, -self.history_max_len, -1)
            flush_if_full(len(values))
        for kind, (ids, ns) in plan.counts.items():
            key = self._k("cnt", kind)
            for pid, n in zip(ids.tolist(), ns.tolist(), strict=True):
                pipe.hincrby(key, str(pid), n)
            flush_if_full(len(ids))
        pop_key = self._k("pop")
        for pid, delta in zip(*(a.tolist() for a in plan.popularity), strict=True):
            pipe.zincrby(pop_key, delta, _member(pid))
        pipe.execute()


_VECTOR_HEADER = struct.Struct("<dH")


def _pack_vector(v: StoredVector) -> bytes:
    space = v.space.encode("utf-8")
    body = np.asarray(v.vector, dtype="<f4").tobytes()
    return _VECTOR_HEADER.pack(float(v.updated_at), len(space)) + space + body


def _unpack_vector(key: int, raw: bytes) -> StoredVector:
    updated_at, n = _VECTOR_HEADER.unpack_from(raw)
    start = _VECTOR_HEADER.size
    space = raw[start : start + n].decode("utf-8")
    vector = np.frombuffer(raw[start + n :], dtype="<f4").astype(np.float32)
    return StoredVector(key, vector, space, updated_at)


def _event_from_fields(fields: dict[bytes, bytes]) -> EngagementEvent:
    return EngagementEvent.model_validate_json(fields[b"e"])


class RedisEventLog:
    """Engagement events on a Redis stream read through one consumer group.

    The group is created at start (``XGROUP CREATE … 0 MKSTREAM``; BUSYGROUP tolerated, and
    re-created if the stream was deleted). ``consume`` = XREADGROUP ``>``, ``reclaim`` =
    XAUTOCLAIM. ``ack`` runs XACK and XDEL of the acknowledged entries in one Lua script, so
    the stream holds exactly the unacknowledged events and ``pending()`` is its length
    (delivered-but-unacknowledged plus not yet delivered). The stream therefore belongs to this
    one group.
    """

    def __init__(
        self,
        client_or_url: RedisClient | str,
        prefix: str = "fs",
        stream: str = "events",
        group: str = "featurizers",
    ) -> None:
        self.client = _client(client_or_url)
        self.key = f"{prefix}:{stream}"
        self.group = group
        self._ack = self.client.register_script(_ACK_LUA)
        self._ensure_group()

    def _ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.key, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def append(self, events: Sequence[EngagementEvent]) -> None:
        """One call's events are added in one MULTI/EXEC: they become visible together, so a
        consumer applies (and refreshes nearline state for) them as one batch."""
        if not events:
            return
        pipe = self.client.pipeline(transaction=True)
        for ev in events:
            pipe.xadd(self.key, {"e": ev.model_dump_json()})
        pipe.execute()

    def consume(
        self, consumer: str, count: int = 256, block_ms: int = 1000
    ) -> list[tuple[str, EngagementEvent]]:
        block = block_ms if block_ms > 0 else None  # BLOCK 0 would wait forever
        try:
            resp = self.client.xreadgroup(
                self.group, consumer, {self.key: ">"}, count=count, block=block
            )
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._ensure_group()
            return []
        out: list[tuple[str, EngagementEvent]] = []
        for _stream, entries in resp or []:
            for eid, fields in entries:
                if fields:
                    out.append((eid.decode(), _event_from_fields(fields)))
        return out

    def ack(self, delivery_ids: Sequence[str]) -> None:
        if delivery_ids:
            self._ack(keys=[self.key], args=[self.group, *delivery_ids])

    def reclaim(
        self, consumer: str, min_idle_ms: int, count: int = 256
    ) -> list[tuple[str, EngagementEvent]]:
        out: list[tuple[str, EngagementEvent]] = []
        start = "0-0"
        while len(out) < count:
            try:
                resp = self.client.xautoclaim(
                    self.key, self.group, consumer, min_idle_ms, start, count=count - len(out)
                )
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._ensure_group()
                return out
            start_raw, entries = resp[0], resp[1]
            for eid, fields in entries:
                if fields:
                    out.append((eid.decode(), _event_from_fields(fields)))
            start = start_raw.decode() if isinstance(start_raw, bytes) else str(start_raw)
            if start == "0-0":
                break
        return out

    def pending(self) -> int:
        return int(self.client.xlen(self.key))


class RedisEmbeddingLog:
    """Nearline post embeddings on a Redis stream: fields ``op``, ``post_id``, ``emb`` (raw
    little-endian float32 bytes; empty for deletes), ``author`` (decimal author id) and
    ``space`` (the embedding space, UTF-8). Entries written before ``author``/``space``
    existed read back as author 0 and space "". The cursor is the last stream id read;
    ``read`` continues after it with an exclusive XRANGE."""

    def __init__(
        self,
        client_or_url: RedisClient | str,
        prefix: str = "fs",
        stream: str = "post_embeddings",
    ) -> None:
        self.client = _client(client_or_url)
        self.key = f"{prefix}:{stream}"

    def append(self, records: Sequence[EmbeddingRecord]) -> None:
        if not records:
            return
        entries: list[dict[str, str | bytes]] = []
        for rec in records:  # validate the whole batch before anything is sent
            if rec.op == "upsert":
                if rec.embedding is None:
                    raise ValueError(f"upsert of post {rec.post_id} without an embedding")
                emb = np.ascontiguousarray(rec.embedding, dtype="<f4").reshape(-1).tobytes()
            elif rec.op == "delete":
                emb = b""
            else:
                raise ValueError(f"unknown op {rec.op!r}")
            entries.append(
                {
                    "op": rec.op,
                    "post_id": str(rec.post_id),
                    "emb": emb,
                    "author": str(int(rec.author_id)),
                    "space": rec.space.encode("utf-8"),
                }
            )
        pipe = self.client.pipeline(transaction=False)
        for fields in entries:
            pipe.xadd(self.key, fields)
        pipe.execute()

    def read(self, cursor: str, max_records: int = 10_000) -> tuple[list[EmbeddingRecord], str]:
        lo = "(" + cursor if cursor else "-"
        entries = self.client.xrange(self.key, min=lo, max="+", count=max_records)
        out: list[EmbeddingRecord] = []
        for eid, fields in entries:
            cursor = eid.decode()
            op = fields[b"op"].decode()
            post_id = int(fields[b"post_id"])
            author_id = int(fields.get(b"author", b"0"))
            space = fields.get(b"space", b"").decode("utf-8")
            if op == "delete":
                out.append(EmbeddingRecord("delete", post_id, None, author_id, space))
            else:
                emb = np.frombuffer(fields[b"emb"], dtype="<f4").astype(np.float32)
                out.append(EmbeddingRecord("upsert", post_id, emb, author_id, space))
        return out, cursor
