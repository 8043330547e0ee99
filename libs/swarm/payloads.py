"""Values of any size in a KV bucket, and plans of any size: inline when they fit a message, by reference when not.

A value over the inline limit goes to the object store (`PAYLOADS_STORE`) under a name of its own (the KV
key and a random suffix: every object is written once, so replacing a value never purges old chunks, a
right no worker holds), and the KV entry holds a small marker, ``{"$ref":"obj://swarm_payloads/<name>","size":N}``. A value that merely
looks like a marker is stored by reference too, so every KV value that parses as a marker is one:
readers need no header and no second round trip unless the value really is elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections import OrderedDict

from nats.js import JetStreamContext
from nats.js.api import ObjectInfo
from nats.js.errors import BadObjectMetaError, DigestMismatchError, KeyNotFoundError, NotFoundError
from nats.js.object_store import OBJ_CHUNKS_PRE_TEMPLATE, OBJ_DIGEST_TYPE, OBJ_STREAM_TEMPLATE, ObjectStore
from pydantic import ValidationError

from swarm.bus import Bus, Handles
from swarm.contracts import (
    MESSAGE_BODY_MAX_BYTES,
    OUTPUTS_BUCKET,
    PAYLOADS_STORE,
    PLANS_STORE,
    BucketSpec,
    Keys,
    Plan,
    PlanRef,
    RunPlanned,
)

REF_PREFIX = b'{"$ref":"obj://'


async def read_object(js: JetStreamContext, store: str, name: str, info: ObjectInfo | None = None) -> bytes:
    """An object's bytes, its size and digest checked; raises NotFoundError when it (or a chunk) is gone.

    Not `ObjectStore.get`: its ordered push consumer stalls ~250 ms on every object of a few chunks
    (nats-io/nats.py#703), which was most of a 4,000-step run's start. The chunks are read with direct gets
    instead, each the next message on the object's chunk subject (the read grant covers them).
    """
    if info is None:
        info = await (await js.object_store(store)).get_info(name)
    if not info.size:
        return b""
    stream, subject = OBJ_STREAM_TEMPLATE.format(bucket=store), OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=store, obj=info.nuid)
    chunks: list[bytes] = []
    seq = 0
    while len(chunks) < (info.chunks or 0):
        msg = await js.get_msg(stream, seq=seq + 1, subject=subject, next=True, direct=True)
        chunks.append(msg.data or b"")
        seq = msg.seq or seq + 1
    data = b"".join(chunks)
    digest = base64.urlsafe_b64decode((info.digest or "").removeprefix(OBJ_DIGEST_TYPE).removeprefix(OBJ_DIGEST_TYPE.upper()))
    if len(data) != info.size or hashlib.sha256(data).digest() != digest:
        raise DigestMismatchError
    return data


class PayloadMissing(LookupError):
    """A marker points at an object that is not in the object store (deleted, or never written)."""


def is_ref(value: bytes) -> bool:
    """Whether a KV value is a reference marker (cheap: a prefix check)."""
    return value.startswith(REF_PREFIX)


def make_ref(store: str, name: str, size: int) -> bytes:
    """The marker stored in KV in place of a large value."""
    return json.dumps({"$ref": f"obj://{store}/{name}", "size": size}, separators=(",", ":")).encode()


def object_name(key: str) -> str:
    """A fresh object name for a value stored under `key` (never an existing object's)."""
    return Keys.payload_object(key, secrets.token_hex(8))


def parse_ref(value: bytes) -> tuple[str, str]:
    """(store, object name) of a marker."""
    ref = json.loads(value)["$ref"]
    store, _, name = ref.removeprefix("obj://").partition("/")
    if not store or not name:
        raise ValueError(f"malformed payload reference {ref!r}")
    return store, name


class Payloads:
    """Stores and loads values of one KV bucket, spilling large ones to the object store."""

    def __init__(
        self,
        bus: Bus,
        *,
        inline_limit: int = MESSAGE_BODY_MAX_BYTES,
        bucket: BucketSpec = OUTPUTS_BUCKET,
        store: BucketSpec = PAYLOADS_STORE,
    ) -> None:
        self.bus = bus
        self.inline_limit = inline_limit
        self.bucket = bucket
        self.store = store

    def fits_inline(self, data: bytes) -> bool:
        """Whether `data` is stored in the bucket itself (else in the object store, by reference)."""
        return len(data) <= self.inline_limit and not is_ref(data)

    def kv_subject(self, key: str) -> str:
        """The subject a value under `key` is published to (a KV put is a publish to it)."""
        return self.bucket.key_subject(key)

    async def put(self, key: str, data: bytes) -> bool:
        """Store `data` under `key`; returns whether it went by reference. Small values cost one KV put."""
        kv = await self.bus.kv(self.bucket)
        if self.fits_inline(data):
            await kv.put(key, data)
            return False
        objects = await self.bus.object_store(self.store.name)
        name = object_name(key)
        await objects.put(name, data)
        await kv.put(key, make_ref(self.store.name, name, len(data)))
        return True

    async def get(self, key: str) -> bytes | None:
        """The full value under `key`, or None when there is none."""
        kv = await self.bus.kv(self.bucket)
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return None
        return await self.resolve(entry.value or b"")

    async def resolve(self, value: bytes) -> bytes:
        """The full value a KV value stands for: itself, or the object its marker names."""
        if not is_ref(value):
            return value
        store, name = parse_ref(value)
        objects = await self.bus.object_store(store)
        try:
            return await read_object(self.bus.js, store, name, await objects.get_info(name))
        except NotFoundError as exc:
            raise PayloadMissing(f"payload {store}/{name} is missing from the object store") from exc


async def resolve(bus: Bus, value: bytes) -> bytes:
    """The full value of a KV entry read elsewhere (e.g. the aggregator's reads of sink outputs)."""
    return await Payloads(bus).resolve(value) if is_ref(value) else value


# --------------------------------------------------------------------------- plans by reference


class PlanUnavailable(LookupError):
    """A plan reference that cannot be honoured: no such object, a digest or size that does not match, or not a plan."""


def plan_bytes(plan: Plan) -> bytes:
    """The JSON a plan is stored and digested as."""
    return plan.model_dump_json().encode()


def plan_ref_of(data: bytes) -> PlanRef:
    """The reference of a plan's JSON bytes."""
    return PlanRef(sha256=hashlib.sha256(data).hexdigest(), size=len(data))


class PlanStore:
    """Plans too large for a message, in PLANS_STORE under their digest; each read once per process, then cached.

    The one place plans are stored and resolved: the SDK, the planner, the dispatcher (and its checkpoint
    restore) and the recorder all go through it.
    """

    def __init__(self, js: JetStreamContext, cache_size: int = 32) -> None:
        self.js = js
        self._cache: OrderedDict[str, Plan] = OrderedDict()
        self._cache_size = cache_size
        self._stores = Handles(js.object_store)

    async def put(self, plan: Plan) -> PlanRef:
        """Store a plan (idempotent: the same plan is the same object) and return its reference."""
        data = plan_bytes(plan)
        ref = plan_ref_of(data)
        store = await self._objects()
        name = Keys.plan_object(ref.sha256)
        try:
            info = await store.get_info(name)
            if info.size == ref.size:
                self._remember(ref, plan)
                return ref  # already there: a retried submission, or the same plan again
        except NotFoundError:
            pass
        await store.put(name, data)
        self._remember(ref, plan)
        return ref

    async def get(self, ref: PlanRef) -> Plan:
        """The plan a reference names, its size and digest checked; raises PlanUnavailable."""
        cached = self._cache.get(ref.sha256)
        if cached is not None:
            self._cache.move_to_end(ref.sha256)
            return cached
        data = await self.get_bytes(ref)
        try:
            plan = Plan.model_validate_json(data)
        except ValidationError as exc:
            raise PlanUnavailable(f"the object of plan {ref.sha256[:12]}… is not a plan: {exc}") from exc
        self._remember(ref, plan)
        return plan

    async def get_bytes(self, ref: PlanRef) -> bytes:
        """The stored JSON of a plan, its size and digest checked (the planner validates it like an inline plan)."""
        name = Keys.plan_object(ref.sha256)
        try:
            store = await self._objects()
        except NotFoundError as exc:  # not in this account (a tenant's): unavailable here, not an outage
            raise PlanUnavailable(f"the object store {PLANS_STORE.name} is not reachable from here") from exc
        try:
            info = await store.get_info(name)
        except (NotFoundError, BadObjectMetaError) as exc:
            raise PlanUnavailable(f"no plan {name} in the object store {PLANS_STORE.name}") from exc
        if info.size != ref.size:  # checked before reading: a reference cannot make us read 1 GB
            raise PlanUnavailable(f"plan {name} is {info.size} bytes, not the {ref.size} its reference says")
        try:
            data = await read_object(self.js, PLANS_STORE.name, name, info)
        except NotFoundError as exc:
            raise PlanUnavailable(f"no plan {name} in the object store {PLANS_STORE.name}") from exc
        except DigestMismatchError as exc:
            raise PlanUnavailable(f"plan {name} does not match its stored digest (corrupted)") from exc
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise PlanUnavailable(f"plan {name} does not match its digest (replaced or corrupted)")
        return data

    async def plan_of(self, planned: RunPlanned) -> Plan:
        """The plan of a planned run, inline or by reference."""
        if planned.plan is not None:
            return planned.plan
        assert planned.plan_ref is not None  # RunPlanned guarantees one of them
        return await self.get(planned.plan_ref)

    async def resolved(self, planned: RunPlanned) -> RunPlanned:
        """The planned run with its plan inline (in memory only: what goes on the wire keeps the reference)."""
        if planned.plan is not None:
            return planned
        return planned.model_copy(update={"plan": await self.plan_of(planned)})

    def _remember(self, ref: PlanRef, plan: Plan) -> None:
        self._cache[ref.sha256] = plan
        self._cache.move_to_end(ref.sha256)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def _objects(self) -> ObjectStore:
        return await self._stores.get(PLANS_STORE.name)
