"""The embedded stack with security on: generated accounts and users, each service under its own user.

The same processes as `swarm up` (nats-server from the venv, every service, the sim gateway), but nats-server
runs the config of `swarm.ops.security` (one account per tenant, least-privilege service users) and each tenant
account's RUNS stream is provisioned; commands run inside as `admin`. `--no-auth` starts the same layout
without it, for side-by-side figures:

    python -m loadtest.secured_stack --home .swarm/secured -- \
        swarm loadtest --nats-url {nats_url} --scenario swarm-300x4000 --no-floor
    python -m loadtest.secured_stack --home .swarm/open --no-auth -- \
        swarm loadtest --nats-url {nats_url} --scenario swarm-300x4000 --no-floor
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats

from swarm.contracts import DEFAULT_POOL
from swarm.ops.natsserver import NatsServer
from swarm.ops.security import (
    ADMIN_USER,
    SYSTEM_USER,
    inbox_prefix,
    parse_pools,
    pool_user,
    provision_tenant,
    provision_user,
    render_nats_auth,
    user_permissions,
)
from swarm.ops.stack import DISPATCHER, SERVICE_ORDER, WORKER

TENANTS = ("default", "acme", "globex")


@dataclass
class SecuredStack:
    """nats-server with the generated config (or none: `secure=False`) and every service as a process."""

    home: Path
    secure: bool = True
    workers: int = 2
    service_env: dict[str, str] = field(default_factory=dict)
    tenants: tuple[str, ...] = TENANTS
    # Worker pools dedicated to tenants, 'pool:tenant+tenant' (swarm.ops.security.parse_pools): one worker
    # each, under the pool's own user, and the dispatcher routes those tenants' steps there.
    dedicated_pools: tuple[str, ...] = ()
    server: NatsServer | None = None
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def passwords(self) -> dict[str, str]:
        """Clear passwords of every user (a throwaway stack: hashing is proven in test_security)."""
        return {user: f"pw-{user}" for user in [*user_permissions(self.tenants, self.pools), SYSTEM_USER]}

    @property
    def pools(self) -> tuple[str, ...]:
        return (DEFAULT_POOL, *self.dedicated_pools)

    def env_of(self, user: str) -> dict[str, str]:
        """The SWARM_NATS_* settings of a process connecting as `user`."""
        assert self.server is not None
        env = {"SWARM_NATS_URL": self.server.url}
        if self.secure:
            env |= {"SWARM_NATS_USER": user, "SWARM_NATS_PASSWORD": self.passwords[user]}
        return env

    def start(self, timeout_s: float = 120.0) -> SecuredStack:
        """Start nats-server, provision the tenant accounts, start the services, wait until all are healthy."""
        for stale in ("nats", "clickhouse"):
            shutil.rmtree(self.home / stale, ignore_errors=True)
        self.home.mkdir(parents=True, exist_ok=True)
        args: tuple[str, ...] = ()
        if self.secure:
            config = self.home / "auth.conf"
            config.write_text(render_nats_auth(self.passwords, self.tenants, self.pools, hashed=False))
            args = ("-c", str(config))
        self.server = NatsServer(store_dir=self.home / "nats", log_file=self.home / "nats.log", extra_args=args).start()
        common = {**self.service_env, "SWARM_CLICKHOUSE_PATH": str(self.home / "clickhouse"), "SWARM_GATEWAY_BACKEND": "sim"}
        dedicated = parse_pools(self.dedicated_pools)
        routes = {tenant: pool for pool, tenants in dedicated.items() for tenant in tenants}
        common["SWARM_DISPATCHER_TENANT_POOLS"] = json.dumps(routes)
        replicas = {WORKER.name: self.workers, DISPATCHER.name: 1}
        for service in SERVICE_ORDER:
            for replica in range(replicas.get(service.name, 1)):
                self._spawn(service.module, f"{service.name}-{replica}", {**common, **self.env_of(service.name)})
        for pool, tenants in dedicated.items():
            pool_env = {"SWARM_WORKER_POOL": pool, "SWARM_WORKER_TENANTS": ",".join(tenants)}
            user = pool_user(pool) if self.secure else WORKER.name
            self._spawn(WORKER.module, user, {**common, **pool_env, **self.env_of(user)})
        if self.secure:
            asyncio.run(self._provision_tenants())
        for service in SERVICE_ORDER:
            self._wait_healthy(service.name, timeout_s)
        return self

    def _spawn(self, module: str, name: str, env: dict[str, str]) -> None:
        with open(self.home / f"{name}.log", "ab") as out:
            self.processes.append(
                subprocess.Popen([sys.executable, "-m", module], env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
            )

    async def _provision_tenants(self) -> None:
        assert self.server is not None
        for tenant in self.tenants:
            user = provision_user(tenant)
            nc = await nats.connect(
                self.server.url, user=user, password=self.passwords[user], inbox_prefix=inbox_prefix(user)
            )
            try:
                await provision_tenant(nc, tenant)
            finally:
                await nc.close()

    def _wait_healthy(self, service: str, timeout_s: float) -> None:
        """Each service's own user sends its own probe, as the compose health check does."""
        env = {**os.environ, **self.env_of(service)}
        for _ in range(int(timeout_s)):
            if any(p.poll() is not None for p in self.processes):
                raise RuntimeError(f"a service exited: see {self.home}")
            check = subprocess.run(
                [sys.executable, "-m", "swarm.health", service, "--wait", "1"], env=env, capture_output=True
            )
            if check.returncode == 0:
                return
        raise RuntimeError(f"{service} never healthy: see {self.home}")

    def violations(self) -> list[str]:
        """The permission violations nats-server logged ("Publish Violation" / "Subscribe Violation")."""
        return [line for line in (self.home / "nats.log").read_text().splitlines() if "Violation" in line]

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        if self.server is not None:
            self.server.stop()


@contextlib.contextmanager
def secured_stack(home: Path, secure: bool = True, **options: object) -> Iterator[SecuredStack]:
    """A started stack, stopped on exit."""
    stack = SecuredStack(home, secure, **options)  # type: ignore[arg-type]
    try:
        yield stack.start()
    finally:
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    """Start the stack, run the command after `--` as `admin`, stop the stack; the command's exit code."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.secured_stack", description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path(".swarm/secured"))
    parser.add_argument("--no-auth", action="store_true", help="the same stack without accounts and users")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-concurrency", type=int, default=256)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    env = {"SWARM_WORKER_CONCURRENCY": str(args.worker_concurrency), "SWARM_GATEWAY_MAX_QUEUE": "1024"}
    with secured_stack(args.home.resolve(), not args.no_auth, workers=args.workers, service_env=env) as stack:
        print(f"stack at {stack.server.url if stack.server else '?'} ({'secured' if stack.secure else 'no auth'})")
        url = stack.server.url if stack.server else ""
        command = [arg.replace("{nats_url}", url) for arg in command]
        code = subprocess.run(command, env={**os.environ, **stack.env_of(ADMIN_USER)}).returncode if command else 0
        if stack.secure:
            print(f"permission violations logged: {len(stack.violations())}")
            for line in stack.violations()[:20]:
                print(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
