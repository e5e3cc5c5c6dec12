"""The client side of the monitor's HTTP API, for the command line and the demo: where the API is, its
token, one call, and following a job until it ends."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import aiohttp

from monitor.core.config import LoadedConfig
from monitor.core.errors import ApiError


def api_base(loaded: LoadedConfig, override: str | None) -> str:
    if override:
        return override.rstrip("/")
    host, _, port = loaded.config.http.listen.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    scheme = "https" if loaded.config.http.tls_cert else "http"
    return f"{scheme}://{host}:{port}"


def api_token(loaded: LoadedConfig) -> str | None:
    env = os.environ.get("FAILOVER_API_TOKEN")
    if env:
        return env
    token = loaded.config.http.token
    return token.get_secret_value() if token else None


async def api_call(base: str, method: str, path: str, *, token: str | None = None,
                   body: Any = None, timeout: float = 15.0,
                   token_hint: str = "FAILOVER_API_TOKEN (or http.token in the config)") -> tuple[int, Any]:
    """One call; a 401's error says which variable carries the token (`token_hint`)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s, \
                s.request(method, base + path, json=body, headers=headers) as r:
            try:
                data = await r.json(content_type=None)
            except ValueError:
                data = {"error": (await r.text())[:200]}
            if r.status == 401 and isinstance(data, dict):
                given = "the token given was refused" if token else "no token was given"
                data["error"] = f"{data.get('error', 'unauthorized')} ({given}): set {token_hint}"
            return r.status, data
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ApiError(f"cannot reach the monitor at {base}: {exc or type(exc).__name__}") from exc


def format_job(job: dict[str, Any]) -> str:
    lines = [f"job {job['job']}: {job['server']} -> {job.get('spare') or '?'} "
             f"(profile {job.get('profile') or '?'}): {job['state']}"]
    for s in job["steps"]:
        lines.append(f"  {s['step']:<22} {s['state']:<8} {s['detail']}")
    if job.get("error"):
        lines.append(f"  error: {job['error']}")
    if job.get("rediscovery"):
        r = job["rediscovery"]
        lines.append(f"  rediscovery: {r['state']} ({r.get('detail') or 'due ' + str(r.get('due'))})")
    return "\n".join(lines)


async def follow_job(base: str, job_id: int, *, token: str | None = None, interval: float = 0.2,
                     out: Any = None, timeout: float = 3600.0) -> dict[str, Any]:
    """Print each step change of a job until it ends; return the final job."""
    out = out or sys.stdout
    seen: dict[str, tuple[str, str]] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status, job = await api_call(base, "GET", f"/api/v1/jobs/{job_id}", token=token)
        if status != 200:
            raise ApiError(f"job {job_id}: HTTP {status}: {job.get('error')}")
        for s in job["steps"]:
            key = (s["state"], s["detail"])
            if s["state"] != "pending" and (s["detail"] or s["state"] != "running") \
                    and seen.get(s["step"]) != key:
                seen[s["step"]] = key
                print(f"  {s['step']:<22} {s['state']:<8} {s['detail']}", file=out, flush=True)
        if job["state"] in ("completed", "failed"):
            return dict(job)
        if loop.time() > deadline:
            raise ApiError(f"job {job_id} still {job['state']} after {timeout:g} s")
        await asyncio.sleep(interval)  # polling the API of another process, not synchronising a test
