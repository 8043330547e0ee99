"""Values of any size in a KV bucket: inline when they fit a message, by reference to the object store when not.

A value over the inline limit goes to the object store (`PAYLOADS_STORE`) under a name of its own (the KV
key and a random suffix: every object is written once, so replacing a value never purges old chunks, a
right no worker holds), and the KV entry holds a small marker, ``{"$ref":"obj://swarm_payloads/<name>","size":N}``. A value that merely
looks like a marker is stored by reference too, so every KV value that parses as a marker is one:
readers need no header and no second round trip unless the value really is elsewhere.
"""

from __future__ import annotations

import json
import secrets

from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.object_store import ObjectStore

from swarm.bus import MAX_INLINE_BYTES, Bus
from swarm.contracts import OUTPUTS_BUCKET, PAYLOADS_STORE, BucketSpec

REF_PREFIX = b'{"$ref":"obj://'


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
    return f"{key}.{secrets.token_hex(8)}"


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
        inline_limit: int = MAX_INLINE_BYTES,
        bucket: BucketSpec = OUTPUTS_BUCKET,
        store: BucketSpec = PAYLOADS_STORE,
    ) -> None:
        self.bus = bus
        self.inline_limit = inline_limit
        self.bucket = bucket
        self.store = store
        self._objects: ObjectStore | None = None

    def fits_inline(self, data: bytes) -> bool:
        """Whether `data` is stored in the bucket itself (else in the object store, by reference)."""
        return len(data) <= self.inline_limit and not is_ref(data)

    def kv_subject(self, key: str) -> str:
        """The subject a value under `key` is published to (a KV put is a publish to it)."""
        return f"$KV.{self.bucket.name}.{key}"

    async def put(self, key: str, data: bytes) -> bool:
        """Store `data` under `key`; returns whether it went by reference. Small values cost one KV put."""
        kv = await self.bus.kv(self.bucket)
        if self.fits_inline(data):
            await kv.put(key, data)
            return False
        objects = await self._object_store()
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
        objects = await self._object_store() if store == self.store.name else await self.bus.js.object_store(store)
        try:
            result = await objects.get(name)
        except NotFoundError as exc:
            raise PayloadMissing(f"payload {store}/{name} is missing from the object store") from exc
        return result.data or b""

    async def _object_store(self) -> ObjectStore:
        if self._objects is None:
            self._objects = await self.bus.js.object_store(self.store.name)
        return self._objects


async def resolve(bus: Bus, value: bytes) -> bytes:
    """The full value of a KV entry read elsewhere (e.g. the aggregator's reads of sink outputs)."""
    return await Payloads(bus).resolve(value) if is_ref(value) else value
