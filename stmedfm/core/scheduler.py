"""Where a Dask scheduler is, and whether it answers as one: checked before anything heavy is imported.

Torch-free (only :mod:`stmedfm.core.errors`; ``distributed`` is imported when an address is checked), so the command
line refuses a bad address, one line within seconds, before it loads torch or claims a result folder.
:mod:`stmedfm.run.executors` connects to what this module has checked.
"""

from __future__ import annotations

import asyncio
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from stmedfm.core.errors import StmedfmError

ENV_SCHEDULER = "DASK_SCHEDULER_ADDRESS"
LOCAL = "local"  #: scheduler value that forces the local pool even when $DASK_SCHEDULER_ADDRESS is set

__all__ = ["ENV_SCHEDULER", "LOCAL", "CONNECT_TIMEOUT", "CLIENT_TIMEOUT", "check_scheduler", "import_distributed",
           "resolve_scheduler"]


def resolve_scheduler(scheduler: Any = None) -> Any:
    """The scheduler to use: the argument, else ``$DASK_SCHEDULER_ADDRESS``, else None (local). 'local' = None."""
    if scheduler is None:
        scheduler = os.environ.get(ENV_SCHEDULER) or None
    if isinstance(scheduler, str) and scheduler.strip().lower() in ("", LOCAL):
        return None
    return scheduler


def import_distributed():
    """``distributed``, or one line saying how to install it."""
    try:
        import distributed
    except ImportError as exc:
        raise StmedfmError(
            "Running a study on a Dask cluster needs dask.distributed, which is not installed: "
            "`pip install 'stmedfm[dask]'` (or `pip install 'dask[distributed]'`), or drop --scheduler / "
            f"unset ${ENV_SCHEDULER} to use the local process pool.") from exc
    return distributed


#: Seconds to reach a scheduler, and then to hear it answer as one: a bad address fails within twice this (a
#: scheduler answers in milliseconds), not after minutes; the client, once it knows the scheduler answers, waits
#: longer (:data:`CLIENT_TIMEOUT`).
CONNECT_TIMEOUT = 5.0
CLIENT_TIMEOUT = 30.0
_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx", "inproc")


def check_scheduler(address: str, timeout: float = CONNECT_TIMEOUT) -> dict:
    """Check, within twice ``timeout`` seconds (reach it, then hear it), that ``address`` is a Dask scheduler: well
    formed, reachable, and answering Dask's identity call as a scheduler. Returns its identity (workers included);
    anything else is one :class:`StmedfmError` line. Hand-written because ``distributed.Client`` retries a refused connection until its
    timeout, waits without limit for a silent listener's handshake, and tries to allocate whatever length a
    non-Dask server's first bytes spell; this asks one question with one deadline and opens no client."""
    import_distributed()
    from distributed.comm import connect
    from distributed.comm.addressing import parse_address, parse_host_port

    text = str(address).strip()
    hint = "a scheduler address looks like tcp://HOST:PORT (what `dask scheduler` prints; its default port is 8786)"
    try:
        scheme, loc = parse_address(text if "://" in text else f"tcp://{text}")
        host, port = parse_host_port(loc) if scheme != "inproc" else ("", 0)
    except (ValueError, TypeError) as exc:
        raise StmedfmError(f"'{address}' is not a Dask scheduler address ({exc}); {hint}.") from None
    if scheme not in _SCHEMES or scheme != "inproc" and (not host or not 0 < int(port) < 65536):
        raise StmedfmError(f"'{address}' is not a Dask scheduler address; {hint}.")
    if scheme in ("tcp", "tls", "ws", "wss"):  # refused or unknown host: say so now, not after the retries
        try:
            socket.create_connection((host, int(port)), timeout=timeout).close()
        except OSError as exc:
            raise StmedfmError(f"Cannot reach the Dask scheduler at '{address}' ({exc.strerror or exc}). Start one "
                               f"(`dask scheduler`, then `dask worker ADDRESS` on each machine) or check the "
                               f"address; without --scheduler the study runs on a local process pool.") from None

    async def identity():
        comm = await connect(f"{scheme}://{loc}", timeout=timeout)  # Dask's handshake, then one question
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    def ask():  # a thread of its own: the caller may be in an event loop already (a notebook)
        return asyncio.run(asyncio.wait_for(identity(), timeout))

    with ThreadPoolExecutor(1) as pool:
        try:
            info = pool.submit(ask).result()
        except Exception as exc:  # garbage can spell any length: numpy's MemoryError included
            what = "did not answer in time" if isinstance(exc, (TimeoutError, asyncio.TimeoutError)) else \
                f"{type(exc).__name__}: {str(exc)[:120]}"
            raise StmedfmError(f"'{address}' is not a Dask scheduler ({what}); {hint}.") from None
    if not isinstance(info, dict) or info.get("type") != "Scheduler":
        kind = info.get("type") if isinstance(info, dict) else type(info).__name__
        raise StmedfmError(f"'{address}' is not a Dask scheduler (it answers as {kind!r}); {hint}.")
    return info
