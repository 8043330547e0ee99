"""The built-in tools: python (sandboxed), scratchpad (per run, in KV), spawn, http_fetch (allow-listed, off by default)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import ssl
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from pydantic import ValidationError

from services.worker_pool.settings import SandboxMode, WorkerSettings
from services.worker_pool.tools.base import Tool, ToolContext, ToolError, ToolOutput
from services.worker_pool.tools.sandbox import PythonSandbox, SandboxLimits, SandboxUnavailable
from swarm.bus import Bus
from swarm.contracts import ID_PATTERN, SCRATCHPAD_BUCKET, Keys, SpawnRequest, is_valid_id

MAX_CODE_CHARS = 20_000
MAX_REDIRECTS = 3
APPEND_ATTEMPTS = 20
# Cloud instance-metadata endpoints (AWS/GCP/Azure/OpenStack, AWS IPv6, ECS tasks, Alibaba): never
# reachable, whatever http_allowed_networks says, since they hand out the machine's credentials.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200")
)


class PythonTool(Tool):
    """Runs Python code in the sandbox; the result is its exit code, stdout and stderr."""

    name = "python"
    description = (
        "Run Python 3 code (standard library only) in a sandbox: no network, a private temporary directory, "
        "a few processes, limited CPU time and memory. Print what you want to see; the reply has exit_code, "
        "stdout, stderr."
    )
    parameters = {
        "type": "object",
        "properties": {"code": {"type": "string", "maxLength": MAX_CODE_CHARS, "description": "The program."}},
        "required": ["code"],
        "additionalProperties": False,
    }

    def __init__(
        self, limits: SandboxLimits | None = None, concurrency: int = 2, mode: SandboxMode = SandboxMode.BWRAP
    ) -> None:
        self.limits = limits or SandboxLimits()
        self.timeout_s = self.limits.wall_s + 5.0
        self.sandbox = PythonSandbox(self.limits, concurrency, mode)

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> PythonTool:
        """The tool with the worker's sandbox mode and limits."""
        limits = SandboxLimits(
            cpu_s=settings.sandbox_cpu_s, memory_bytes=settings.sandbox_memory_mb * 2**20,
            wall_s=settings.sandbox_wall_s, file_bytes=settings.sandbox_file_mb * 2**20,
            disk_bytes=settings.sandbox_disk_mb * 2**20, output_bytes=settings.sandbox_output_kb * 1024,
            max_processes=settings.sandbox_processes, user=settings.sandbox_user,
        )  # fmt: skip
        return cls(limits, settings.sandbox_concurrency, settings.sandbox)

    async def call(self, args: dict[str, Any], ctx: ToolContext) -> ToolOutput:
        """Run `args['code']`; a non-zero exit is a ToolError carrying the same fields."""
        try:
            run = await self.sandbox.run(args["code"])
        except SandboxUnavailable as exc:
            raise ToolError(f"the python tool is unavailable on this worker: {exc}") from exc
        if not run.ok:
            raise ToolError(json.dumps(run.as_dict()))
        return run.as_dict()


class ScratchpadTool(Tool):
    """A key-value scratchpad shared by the agents of one run (JetStream KV, keys '<run_id>.<key>')."""

    name = "scratchpad"
    description = (
        "A scratchpad shared by every agent of this run. op=get reads a key, op=put replaces it, op=append "
        "adds text to its end, op=keys lists the keys."
    )
    parameters = {
        "type": "object",
        "properties": {
            "op": {"type": "string", "enum": ["get", "put", "append", "keys"]},
            "key": {"type": "string", "pattern": ID_PATTERN, "maxLength": 64},
            "value": {"type": "string", "maxLength": 65536},
        },
        "required": ["op"],
        "additionalProperties": False,
    }

    async def call(self, args: dict[str, Any], ctx: ToolContext) -> ToolOutput:
        """Do one scratchpad operation."""
        if ctx.bus is None:
            raise ToolError("the scratchpad is not available here")
        kv = await ctx.bus.kv(SCRATCHPAD_BUCKET)
        op = args["op"]
        if op == "keys":
            return {"keys": await self._keys(ctx.bus, ctx.tenant, ctx.run_id)}
        key = args.get("key", "")
        if not is_valid_id(key):
            raise ToolError(f"'key' must match {ID_PATTERN}")
        full_key = Keys.scratchpad(ctx.tenant, ctx.run_id, key)
        if op == "get":
            try:
                entry = await kv.get(full_key)
            except (KeyNotFoundError, KeyDeletedError):
                return {"key": key, "value": None}
            return {"key": key, "value": (entry.value or b"").decode(errors="replace")}
        value = args.get("value")
        if not isinstance(value, str):
            raise ToolError(f"op={op} needs a string 'value'")
        if op == "put":
            self._check_size(value, ctx)
            await kv.put(full_key, value.encode())
            return {"key": key, "size": len(value)}
        return await self._append(kv, full_key, key, value, ctx)

    async def _append(self, kv: Any, full_key: str, key: str, value: str, ctx: ToolContext) -> ToolOutput:
        # Optimistic concurrency: other agents of the run may append to the same key at the same time.
        for _ in range(APPEND_ATTEMPTS):
            try:
                entry = await kv.get(full_key)
            except (KeyNotFoundError, KeyDeletedError):
                self._check_size(value, ctx)
                try:
                    await kv.create(full_key, value.encode())
                except KeyWrongLastSequenceError:
                    continue
                return {"key": key, "size": len(value)}
            text = (entry.value or b"").decode(errors="replace") + value
            self._check_size(text, ctx)
            try:
                await kv.update(full_key, text.encode(), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue
            return {"key": key, "size": len(text)}
        raise ToolError(f"append to {key!r} kept conflicting with other writers; try again")

    @staticmethod
    async def _keys(bus: Bus, tenant: str, run_id: str) -> list[str]:
        """This run's keys: the last entry of each, headers only, from a consumer filtered to the run.

        Not `KeyValue.watch`: its consumer is unnamed, created by `CONSUMER.CREATE.<stream>` with the filter
        in the body, which no grant can scope; a named one carries its filter in the subject, the form a
        dedicated pool's worker may use for its tenants' keys only (swarm.ops.security).
        """
        prefix = SCRATCHPAD_BUCKET.key_subject("")
        config = ConsumerConfig(
            name=bus.nc.new_inbox().rpartition(".")[2], deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            headers_only=True, inactive_threshold=30.0,
        )  # fmt: skip
        sub = await bus.js.subscribe(
            prefix + Keys.of_run(tenant, run_id), stream=SCRATCHPAD_BUCKET.stream, ordered_consumer=True, config=config
        )
        keys = []
        try:
            info = await sub.consumer_info()
            # Nothing delivered yet and nothing pending: no keys (else each message says how many follow it).
            pending = info.num_pending + info.delivered.consumer_seq
            while pending:
                msg = await sub.next_msg(timeout=5.0)
                pending = msg.metadata.num_pending
                if (msg.headers or {}).get("KV-Operation") in (None, "PUT"):
                    keys.append(Keys.within_run(msg.subject.removeprefix(prefix), tenant, run_id))
        finally:
            await sub.unsubscribe()
        return sorted(keys)

    @staticmethod
    def _check_size(text: str, ctx: ToolContext) -> None:
        if len(text.encode()) > ctx.settings.scratchpad_max_bytes:
            raise ToolError(f"scratchpad values are limited to {ctx.settings.scratchpad_max_bytes} bytes")


_SPAWN_AGENT = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "pattern": ID_PATTERN, "maxLength": 64},
        "role": {"type": "string", "minLength": 1, "maxLength": 200},
        "instructions": {"type": "string", "maxLength": 2000},
        "memory": {
            "type": "object",
            "description": "What the new agent remembers: 'seed' is the memory you give it; 'mode' how it keeps "
            "its own turns.",
            "properties": {
                "mode": {"type": "string", "enum": ["none", "last_turns", "summary"]},
                "max_turns": {"type": "integer", "minimum": 1, "maximum": 100},
                "max_chars": {"type": "integer", "minimum": 200, "maximum": 100000},
                "seed": {"type": "string", "maxLength": 8000},
            },
            "additionalProperties": False,
        },
    },
    "required": ["id", "role"],
    "additionalProperties": False,
}
_SPAWN_STEP = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "pattern": ID_PATTERN, "maxLength": 64},
        "agent_id": {"type": "string", "pattern": ID_PATTERN, "maxLength": 64},
        "instruction": {"type": "string", "minLength": 1, "maxLength": 4000},
        "depends_on": {"type": "array", "items": {"type": "string", "pattern": ID_PATTERN, "maxLength": 64}},
        "tools": {"type": "array", "items": {"type": "string", "maxLength": 64}},
    },
    "required": ["id", "agent_id", "instruction"],
    # The other StepSpec fields (budgets, the sim backend's scripts) are allowed and checked by SpawnRequest;
    # listing them would only lengthen every prompt that offers the tool.
    "additionalProperties": True,
}


class SpawnTool(Tool):
    """Adds steps (and agents) to the run; the worker reports them in StepResult.spawn for the dispatcher."""

    name = "spawn"
    description = (
        "Add new steps (and new agents) to this run. New steps run after this step; steps waiting for this "
        "step also wait for them. Step and agent ids must be new in the run; a new step's agent_id names an "
        "existing or a new agent; depends_on may name other new steps or steps that already finished."
    )
    parameters = {
        "type": "object",
        "properties": {
            "agents": {"type": "array", "items": _SPAWN_AGENT, "maxItems": 50},
            "steps": {"type": "array", "items": _SPAWN_STEP, "minItems": 1, "maxItems": 200},
        },
        "required": ["steps"],
        "additionalProperties": False,
    }

    async def call(self, args: dict[str, Any], ctx: ToolContext) -> ToolOutput:
        """Validate the request (ids, references, this step's spawn budget) and keep it for the result."""
        try:
            request = SpawnRequest.model_validate({"agents": args.get("agents", []), "steps": args.get("steps")})
        except ValidationError as exc:
            raise ToolError(f"invalid spawn request: {exc}") from exc
        earlier = ctx.spawned()
        step_ids = [s.id for s in (earlier.steps if earlier else ())] + [s.id for s in request.steps]
        agent_ids = [a.id for a in (earlier.agents if earlier else ())] + [a.id for a in request.agents]
        if len(step_ids) > ctx.settings.spawn_max_steps:
            raise ToolError(f"a step may spawn at most {ctx.settings.spawn_max_steps} steps")
        if len(set(step_ids)) != len(step_ids) or ctx.step_id in step_ids:
            raise ToolError("spawned step ids must be unique and differ from the spawning step's id")
        if len(set(agent_ids)) != len(agent_ids):
            raise ToolError("spawned agent ids must be unique")
        for step in request.steps:
            if step.id in step.depends_on:
                raise ToolError(f"step {step.id} depends on itself")
        budget = ctx.spawn_budget
        if budget is not None and (len(step_ids) > budget.steps or len(agent_ids) > budget.agents):
            raise ToolError(
                f"spawn refused: over the run's limits (it may still add {budget.steps} steps and {budget.agents} "
                f"agents; this step asked for {len(step_ids)} steps and {len(agent_ids)} agents in all). Nothing was "
                "spawned: carry on without it, or spawn less."
            )
        ctx.spawns.append(request)
        return {"spawned_steps": [s.id for s in request.steps], "spawned_agents": [a.id for a in request.agents]}


def refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address, allowed: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> str | None:
    """Why http_fetch must not connect to `address` (None: it may)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if any(address in network for network in allowed):
        return None
    for kind in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(address, f"is_{kind}"):
            return f"a {kind.replace('_', '-')} address"
    return None if address.is_global else "not a public address"


class HttpFetchTool(Tool):
    """GET a URL on an allow-listed host and port, connecting only to public addresses (each redirect checked)."""

    name = "http_fetch"
    description = "Fetch a web page or API response with HTTP GET (only some hosts are allowed)."
    parameters = {
        "type": "object",
        "properties": {"url": {"type": "string", "maxLength": 2000, "description": "http(s) URL."}},
        "required": ["url"],
        "additionalProperties": False,
    }

    def __init__(
        self, allowed_hosts: tuple[str, ...], max_bytes: int, timeout_s: float = 20.0,
        allowed_ports: tuple[int, ...] = (80, 443), allowed_networks: tuple[str, ...] = (),
        verify: ssl.SSLContext | bool = True,
    ) -> None:  # fmt: skip
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)
        self.allowed_ports = frozenset(allowed_ports)
        self.allowed_networks = tuple(ipaddress.ip_network(n, strict=False) for n in allowed_networks)
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.verify = verify  # the TLS trust: certifi's CAs unless a context is given

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> HttpFetchTool:
        """The tool with the worker's allow-lists."""
        return cls(
            settings.http_allowed_hosts, settings.http_max_bytes,
            allowed_ports=settings.http_allowed_ports, allowed_networks=settings.http_allowed_networks,
        )  # fmt: skip

    async def _pin(self, url: str) -> tuple[str, str, str]:
        """Check `url` and resolve its host once: (the URL with the checked address, Host header, host name)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ToolError(f"only http and https URLs are allowed, not {parts.scheme!r}")
        host = (parts.hostname or "").lower()
        if host not in self.allowed_hosts:
            raise ToolError(f"host {parts.hostname!r} is not on the allow-list")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise ToolError(f"invalid port in {url!r}") from exc
        if port not in self.allowed_ports:
            raise ToolError(f"port {port} is not on the allow-list ({', '.join(map(str, sorted(self.allowed_ports)))})")
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ToolError(f"cannot resolve {host!r}: {exc}") from exc
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
        for address in addresses:  # every answer is checked: any of them could be the one used
            if reason := refusal(address, self.allowed_networks):
                raise ToolError(f"host {host!r} resolves to {address}, {reason}: refused")
        if not addresses:
            raise ToolError(f"cannot resolve {host!r}")
        address = addresses[0]
        netloc = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
        host_header = host if parts.port is None else f"{host}:{port}"
        return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")), host_header, host

    async def call(self, args: dict[str, Any], ctx: ToolContext) -> ToolOutput:
        """Fetch, following at most a few redirects, each checked and resolved anew like the first URL."""
        url = args["url"]
        async with httpx.AsyncClient(
            follow_redirects=False, timeout=self.timeout_s, trust_env=False, verify=self.verify
        ) as client:
            for _ in range(MAX_REDIRECTS + 1):
                pinned, host_header, host = await self._pin(url)
                # The connection goes to the checked address: no second lookup a DNS answer could change.
                # TLS still verifies the certificate for the name (SNI), not for the address.
                try:
                    async with client.stream(
                        "GET", pinned, headers={"Host": host_header}, extensions={"sni_hostname": host}
                    ) as response:
                        if response.is_redirect and "location" in response.headers:
                            url = urljoin(url, response.headers["location"])
                            continue
                        body = bytearray()
                        async for chunk in response.aiter_bytes():
                            body += chunk
                            if len(body) > self.max_bytes:
                                break
                        return {
                            "status": response.status_code,
                            "content_type": response.headers.get("content-type", ""),
                            "body": bytes(body[: self.max_bytes]).decode(errors="replace"),
                            "truncated": len(body) > self.max_bytes,
                        }
                except httpx.HTTPError as exc:
                    raise ToolError(f"fetch failed: {exc}") from exc
        raise ToolError(f"more than {MAX_REDIRECTS} redirects")
