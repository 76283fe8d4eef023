"""Reloads built in a separate process, so building a bundle does not take the server's GIL.

A reload while requests are being served used to run :func:`load_serving_bundle
<crmscore.serving.registry.load_serving_bundle>` in a worker thread of the serving process:
MLflow client calls (SQLAlchemy), artefact downloads, pandas, pyarrow and the per-customer
Python loops of the build hold the GIL, so the event loop waited for it on every request
(measured with ``py-spy``: docs/reliability.md). :class:`LoaderProcess` runs the build in a
child process instead (a fresh interpreter started with ``python -c``, see :data:`_BOOTSTRAP`;
nothing is inherited from the threaded server), at the CPU niceness ``load_niceness`` of the
settings, and sends the finished bundle back pickled. The server process only unpickles it
(NumPy and Arrow buffers are copied; the boosters are parsed from their model strings by
LightGBM's C code, which releases the GIL) and runs the warm-up, then swaps it in.

The child is started beside the server's first load and, given the server's settings, does its
one-time set-up at once (importing LightGBM and MLflow and building MLflow's tracking store, seconds
of CPU: :func:`~crmscore.serving.registry.prepare_loading`), so that its first reload costs what
later ones cost; then it builds one bundle per request, in order. Each request carries the
server's settings and environment (so ``MLFLOW_*`` variables set since the child started
apply), and the log records of the build are re-emitted by the server's own loggers. A child
that dies (killed, out of memory) fails that load with :class:`LoaderProcessDied`; the next
load starts a new child. Memory the build leaves behind (allocator arenas, MLflow's caches)
stays in the child, which returns its free heap to the system after each build
(``malloc_trim``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import gc
import logging
import multiprocessing
import os
import pickle
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from crmscore.serving.settings import ServingSettings

__all__ = ["LoaderProcess", "LoaderProcessDied", "from_pieces", "limit_malloc_arenas", "malloc_trim", "to_pieces"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


class LoaderProcessDied(RuntimeError):
    """The loader process ended before answering (killed, out of memory, crashed)."""


#: glibc's mallopt parameter number of M_ARENA_MAX (malloc.h)
_M_ARENA_MAX = -8


def _libc() -> Any:
    return ctypes.CDLL(ctypes.util.find_library("c"))


def limit_malloc_arenas(count: int) -> bool:
    """Cap glibc's malloc arenas at ``count`` (``mallopt(M_ARENA_MAX)``), unless the environment
    already says (``MALLOC_ARENA_MAX``, read by glibc at start). Returns whether it was set.

    glibc gives threads arenas of their own (up to 8 per core): the memory that the worker
    threads of a reload free stays mapped in theirs, and the server's RSS grew by ~10% over ten
    reloads even with ``malloc_trim`` (docs/reliability.md; +1% with 2 arenas). Call it before
    the server starts its threads.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = _libc().mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, count))


def malloc_trim() -> bool:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim(0)``).

    Freed Python and NumPy objects go back to malloc, which keeps the pages of its arenas
    mapped; after a bundle is replaced or built that is tens of MB per swap. Returns whether
    the call was made (False where the C library has no ``malloc_trim``, e.g. musl or macOS).
    """
    try:
        trim = _libc().malloc_trim
    except (OSError, AttributeError, TypeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)  # a ctypes call: the GIL is released while glibc walks its arenas
    return True


# --- the bundle over the pipe ----------------------------------------------------------------


def to_pieces(bundle: Any) -> dict[str, bytes]:
    """A dataclass (the serving bundle) as one pickle per field.

    The server unpickles them one at a time (:func:`from_pieces`): one ``pickle.loads`` of the
    whole bundle is a single C call holding the GIL (measured here: event-loop stalls up to
    ~60 ms on 5,000 customers); between pieces the event loop gets the GIL back.
    """
    return {f.name: pickle.dumps(getattr(bundle, f.name), protocol=pickle.HIGHEST_PROTOCOL)
            for f in dataclasses.fields(bundle)}


def from_pieces(cls: type[T], pieces: dict[str, bytes]) -> T:
    """The dataclass back from :func:`to_pieces` (``pieces`` is emptied as it is read)."""
    values = {}
    for name in list(pieces):
        values[name] = pickle.loads(pieces.pop(name))  # noqa: S301 - our own child, over a private pipe
    return cls(**values)


# --- the child -------------------------------------------------------------------------------


class _Collect(logging.Handler):
    """Keeps the build's log records (name, level, message) to send back to the server."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[str, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.name, record.levelno, record.getMessage()))


def _sync_environ(environ: Mapping[str, str]) -> None:
    """Make the child's environment the server's (variables set or removed since the spawn)."""
    for key in [k for k in os.environ if k not in environ]:
        del os.environ[key]
    for key, value in environ.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def _set_niceness(value: int) -> None:
    """This process's CPU niceness (absolute); left as it is where the system refuses."""
    with contextlib.suppress(OSError, AttributeError):
        if os.getpriority(os.PRIO_PROCESS, 0) != value:
            os.setpriority(os.PRIO_PROCESS, 0, value)


def _prepare(settings: ServingSettings) -> None:
    """The one-time set-up before the first request; a failure is left for that load to report."""
    from crmscore.serving.registry import prepare_loading

    started = time.perf_counter()
    try:
        prepare_loading(settings)
    except Exception as exc:  # the load that follows meets the same problem and reports it
        logger.info("bundle loader process: set-up failed, left to the first load: %s", type(exc).__name__)
        return
    logger.info("bundle loader process: LightGBM and MLflow set up in %.1f s", time.perf_counter() - started)


def _child_main(conn: Connection) -> None:
    """The loader process: set up for loading when asked (``"prepare"``, no reply), and build
    one bundle per ``"load"`` request, until the server closes the pipe."""
    from crmscore.serving.registry import LoadError, load_serving_bundle

    collect = _Collect()
    crmscore_logger = logging.getLogger("crmscore")
    crmscore_logger.addHandler(collect)
    crmscore_logger.setLevel(logging.INFO)
    crmscore_logger.propagate = False  # the server logs them, once
    while True:
        try:
            kind, settings, environ = conn.recv()
        except (EOFError, OSError):
            return
        _sync_environ(environ)
        _set_niceness(settings.load_niceness)
        if kind == "prepare":
            _prepare(settings)  # its records go back with the next load's
            continue
        reply: tuple[Any, ...]
        try:
            pieces = to_pieces(load_serving_bundle(settings))
            reply = ("ok", pieces, collect.records)
        except LoadError as exc:
            reply = ("error", exc.reason, exc.detail, None, collect.records)
        except Exception as exc:  # anything else is still a failed load, reported with its traceback
            reply = ("error", "unexpected error while loading", f"{type(exc).__name__}: {exc}",
                     traceback.format_exc(), collect.records)
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return
        del reply
        collect.records = []
        pieces = {}
        gc.collect()
        malloc_trim()


# --- the server's side -----------------------------------------------------------------------

#: how the child starts: the server's ``sys.path``, then the loop of :func:`_child_main` on the
#: inherited end of the pipe. Not ``multiprocessing``'s spawn, which would run the server's
#: ``__main__`` again in the child (a script without a ``__main__`` guard would serve twice).
_BOOTSTRAP = (
    "import sys; sys.path[:0] = [p for p in {path!r} if p not in sys.path]; "
    "from multiprocessing.connection import Connection; "
    "from crmscore.serving.loader_process import _child_main; _child_main(Connection({fd}))"
)


class LoaderProcess:
    """A child process building serving bundles; :meth:`load` blocks until one is built.

    Thread-safe; loads run one at a time. :meth:`close` stops the child.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None

    @property
    def pid(self) -> int | None:
        process = self._process
        return None if process is None else process.pid

    def start(self, settings: ServingSettings | None = None) -> None:
        """Start the child (it imports in the background) unless it is running.

        With ``settings``, a child started now also does its one-time set-up for them before
        it takes a request (:func:`~crmscore.serving.registry.prepare_loading`), so the first
        load does not pay for it.
        """
        with self._lock:
            if self._start() and settings is not None:
                assert self._conn is not None
                # no reply; a child already gone is found by the next load
                with contextlib.suppress(OSError):
                    self._conn.send(("prepare", settings, dict(os.environ)))

    def _start(self) -> bool:
        """Start the child unless it is running; whether it was started now."""
        if self._process is not None and self._process.poll() is None:
            return False
        self._stop()
        parent, child = multiprocessing.Pipe(duplex=True)
        fd = child.fileno()
        try:
            process = subprocess.Popen([sys.executable, "-c", _BOOTSTRAP.format(path=list(sys.path), fd=fd)],
                                       pass_fds=(fd,), stdin=subprocess.DEVNULL, close_fds=True)
        finally:
            child.close()
        self._process, self._conn = process, parent
        logger.info("bundle loader process %s started", process.pid)
        return True

    def load(self, settings: ServingSettings) -> tuple[dict[str, bytes], list[tuple[str, int, str]]]:
        """Build a bundle in the child: ``(its pieces for from_pieces, log records)``.

        Raises
        ------
        LoadError
            The build failed (the reason and detail of the child's error).
        LoaderProcessDied
            The child ended before answering; the next call starts a new one.
        """
        from crmscore.serving.registry import LoadError

        with self._lock:
            self._start()
            assert self._conn is not None and self._process is not None
            try:
                self._conn.send(("load", settings, dict(os.environ)))
                reply = self._conn.recv()
            except (EOFError, OSError) as exc:
                process = self._process
                try:
                    code = process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    code = None
                self._stop()
                raise LoaderProcessDied(f"the bundle loader process {process.pid} ended "
                                        f"(exit code {code}) before answering") from exc
        if reply[0] == "ok":
            return reply[1], reply[2]
        _, reason, detail, trace, records = reply
        replay(records)
        if trace:
            logger.error("unexpected error while loading a bundle (in the loader process):\n%s", trace.rstrip())
        raise LoadError(reason, detail)

    def close(self) -> None:
        """Stop the child (a load running in it is abandoned)."""
        # First without the lock: a load waiting for its reply holds it, and ends with
        # LoaderProcessDied once the child is gone.
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        if self._lock.acquire(timeout=10):
            try:
                self._stop()
            finally:
                self._lock.release()

    def _stop(self) -> None:
        conn, process = self._conn, self._process
        self._conn = self._process = None
        if conn is not None:
            conn.close()  # the child's recv() ends: it returns
        if process is not None and process.poll() is None:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def replay(records: list[tuple[str, int, str]]) -> None:
    """Log the child's records with the server's loggers of the same names."""
    for name, level, message in records:
        logging.getLogger(name).log(level, "%s", message)
