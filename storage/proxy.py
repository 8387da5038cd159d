"""Optuna's gRPC storage proxy: one process holds the database connections for many workers.

Server (``hpo storage-proxy``): ``start_server`` serves a storage made by make_storage, so the database
side keeps its settings (WAL, busy timeout and BEGIN IMMEDIATE on SQLite; the pre-ping pool and retries on
PostgreSQL), behind Optuna's in-process trial cache as Optuna advises. It binds one address only (no
SO_REUSEPORT: a second proxy on the same port is an error, not a silent twin). It has no authentication
and no TLS: anyone who reaches the port can read, change and delete every study.

Client (``grpc://HOST:PORT`` as a storage URL): Optuna's GrpcStorageProxy, made patient and given a
heartbeat. Patient: every call waits for an unreachable proxy up to OUTAGE_WAIT_S, so workers ride out a
proxy restart; a call cut off mid-way (the proxy died while answering) is repeated when repeating is
harmless, and otherwise settled by reading back what the database holds. Opening waits only OPEN_WAIT_S,
so a wrong address is one line within seconds, and a process told to stop waits STOPPING_WAIT_S at most.
Heartbeat: the proxy has no heartbeat call, so trials carry a liveness attr instead (storage/liveness.py).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import urllib.parse
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from cifar_hpo.storage.attrs import LIVENESS_ATTR
from cifar_hpo.storage.errors import ProxyError, StorageError
from cifar_hpo.storage.liveness import LivenessHeartbeat, StaleTrialCallback

_logger = logging.getLogger(__name__)

SCHEME = "grpc://"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 13000
OPEN_WAIT_S = 10.0  # a command opening a grpc:// storage: a wrong address or a stopped proxy fails this fast
OUTAGE_WAIT_S = 120.0  # a call to a proxy that went away (a restart) waits this long before it fails
SERVER_THREADS = 10  # Optuna's default; the database pool, not this, bounds the connections
STOP_GRACE_S = 5.0  # calls in flight when the proxy stops may finish (their database writes included)
INSTALL_HINT = "pip install 'cifar-hpo[grpc]'"
# Reconnect to a restarted proxy within ~2 s (gRPC's default backoff grows to 120 s between attempts).
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.initial_reconnect_backoff_ms", 200),
                   ("grpc.min_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2000)]
# Calls that may be sent again when the proxy died while answering: reads and overwrites of one value.
# Creating a study or trial, deleting a study and changing a trial's state are not (see ProxyStorage).
REPEATABLE = frozenset((
    "GetStudyIdFromName", "GetStudyNameFromId", "GetStudyDirections", "GetStudyUserAttributes",
    "GetStudySystemAttributes", "GetAllStudies", "GetTrialIdFromStudyIdTrialNumber", "GetTrial", "GetTrials",
    "SetStudyUserAttribute", "SetStudySystemAttribute", "SetTrialParameter", "SetTrialIntermediateValue",
    "SetTrialUserAttribute", "SetTrialSystemAttribute",
))

STOPPING_WAIT_S = 2.0  # a process that is stopping (Ctrl-C, SIGTERM) waits no longer for a proxy that is gone
CONNECT_STEP_S = 0.25  # waits for a connection in steps this long (Ctrl-C gets through between them)

_open_wait_s = OPEN_WAIT_S
_stopping: Callable[[], bool] = lambda: False
_stopping_since: float | None = None


def is_proxy_url(url: str) -> bool:
    return isinstance(url, str) and url[:len(SCHEME)].lower() == SCHEME


def proxy_address(url: str) -> tuple[str, int]:
    """(host, port) of a grpc://HOST:PORT URL; StorageError for anything else (user info, a path, a query)."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # not a number, or outside 0..65535
        port = None
    if not parts.hostname or not port or "@" in parts.netloc or parts.path not in ("", "/") or parts.query \
            or parts.fragment:
        shown = url if "@" not in url else SCHEME + "***@" + url.rsplit("@", 1)[1]  # never echo a password
        raise StorageError(f"storage URL {shown!r} is not a proxy address; use grpc://HOST:PORT, the address "
                           "`hpo storage-proxy` prints (it takes no user, password, path or options)")
    return parts.hostname, port


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def normalize_proxy_url(url: str) -> str:
    return SCHEME + format_address(*proxy_address(url))


def open_patiently() -> None:
    """Let this process wait for an unreachable proxy as long as for any outage, also when it opens the
    storage: for a trial process whose worker already reached the proxy, an unreachable proxy is a restart
    to wait out, not a wrong address."""
    global _open_wait_s
    _open_wait_s = OUTAGE_WAIT_S


def stop_waiting_when(stopping: Callable[[], bool]) -> None:
    """Once ``stopping()`` is true (the process was told to stop), its calls wait STOPPING_WAIT_S in all for
    an unreachable proxy: a stopping worker's last writes (its trial marked FAIL) are tried, not waited for;
    the liveness watch of the other workers fails and retries the trial if they do not land."""
    global _stopping
    _stopping = stopping


def _stop_deadline() -> float:
    """When a stopping process stops waiting for the proxy (infinity while it is not stopping)."""
    global _stopping_since
    if not _stopping():
        return float("inf")
    if _stopping_since is None:
        _stopping_since = time.monotonic()
    return _stopping_since + STOPPING_WAIT_S


def import_grpc() -> Any:
    """The grpc module, once Optuna's generated code accepts the installed grpcio and protobuf; StorageError
    (one line, with the install command) when they are missing or too old."""
    try:
        import grpc
        from optuna.storages._grpc.auto_generated import api_pb2_grpc  # noqa: F401  (no public API; checks versions)
    except Exception as err:  # ImportError, or grpcio/protobuf older than Optuna's generated code
        raise StorageError(f"the storage proxy needs grpcio and protobuf ({str(err).splitlines()[0]}); "
                           f"{INSTALL_HINT}") from None
    return grpc


class _CutMidway(ProxyError):
    """A call that may or may not have reached the database: the proxy died while answering it."""


class PatientStub:
    """Optuna's generated stub, each call made patient (see the module docstring). A failure of the proxy
    itself becomes ProxyError; Optuna's own answers (NOT_FOUND, ALREADY_EXISTS, ...) pass unchanged to
    GrpcStorageProxy, which turns them into KeyError, DuplicatedStudyError, ..."""

    def __init__(self, stub: Any, channel: Any, url: str, wait_s: float) -> None:
        self._stub, self._channel, self._url, self._wait_s = stub, channel, url, wait_s
        self._connected = threading.Event()
        channel.subscribe(self._on_connectivity)

    def _on_connectivity(self, state: Any) -> None:
        (self._connected.set if state == import_grpc().ChannelConnectivity.READY else self._connected.clear)()

    def wait_connected(self, seconds: float) -> bool:
        """Whether the proxy is connected within ``seconds`` (STOPPING_WAIT_S once this process is stopping).

        Waits in short steps: Ctrl-C gets through between them (a gRPC future's wait holds it back), and a
        process that is stopping gives up soon, leaving its trial to the liveness watch of other workers."""
        grpc = import_grpc()
        deadline = time.monotonic() + seconds
        while not self._connected.is_set():
            if time.monotonic() >= min(deadline, _stop_deadline()):
                return False
            ready = grpc.channel_ready_future(self._channel)  # also asks the channel to connect
            try:
                ready.result(timeout=CONNECT_STEP_S)
                return True
            except grpc.FutureTimeoutError:
                ready.cancel()
        return True

    def __getattr__(self, name: str) -> Callable[[Any], Any]:
        method = getattr(self._stub, name)
        return lambda request: self._call(name, method, request)

    def _call(self, name: str, method: Any, request: Any) -> Any:
        grpc = import_grpc()
        started = time.monotonic()
        deadline = started + self._wait_s
        pause = 0.2
        while True:
            if not self.wait_connected(deadline - time.monotonic()):
                raise ProxyError(f"no answer from the storage proxy at {self._url} for "
                                 f"{time.monotonic() - started:.0f} s; is `hpo storage-proxy` running there?")
            try:
                # the blocking call, not .future(): only it lets Ctrl-C through while it waits
                return method(request, timeout=max(0.1, deadline - time.monotonic()), wait_for_ready=True)
            except grpc.RpcError as err:
                code = err.code()
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise ProxyError(f"no answer from the storage proxy at {self._url} for {self._wait_s:g} s "
                                     f"(during {name})") from None
                # A stopping proxy (SIGTERM) cancels the calls that reach it while it drains: gone, like UNAVAILABLE
                if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL,
                                grpc.StatusCode.RESOURCE_EXHAUSTED):  # the proxy's storage raised, or gRPC failed
                        raise ProxyError(f"storage proxy {self._url}: {_details(err)}") from None
                    raise  # Optuna's own answer: GrpcStorageProxy maps it
                if name not in REPEATABLE:
                    raise _CutMidway(f"storage proxy {self._url} went away during {name}") from None
                if time.monotonic() + pause >= deadline:
                    raise ProxyError(f"storage proxy {self._url} kept failing: {_details(err)}") from None
                _logger.warning("storage proxy %s went away during %s; repeating it", self._url, name)
                time.sleep(pause)
                pause = min(2.0, pause * 2)


def _details(err: Any) -> str:
    lines = (err.details() or "").strip().splitlines()
    return lines[0] if lines else str(err.code())  # "Exception calling application: <the storage's error>"


class ProxyStorage(LivenessHeartbeat, optuna.storages.GrpcStorageProxy):
    """GrpcStorageProxy whose calls wait out proxy restarts, and whose trials carry a liveness attr so that
    the trials of killed workers are failed and retried as on a storage with Optuna's native heartbeat."""

    def __init__(self, host: str, port: int, *, heartbeat_interval: int, grace_period: float,
                 heartbeat_stale_trial_callback: StaleTrialCallback | None, wait_s: float = OUTAGE_WAIT_S) -> None:
        self.url = SCHEME + format_address(host, port)
        self._wait_s = wait_s
        self.init_liveness(heartbeat_interval, grace_period, heartbeat_stale_trial_callback)
        with warnings.catch_warnings():  # the proxy is "experimental" in Optuna; this service relies on it on purpose
            warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
            super().__init__(host=host, port=port)

    def _setup(self) -> None:
        """Optuna's channel and cache, with the reconnect options and the patient stub."""
        # no public API takes channel options, nor a stub for the client's trial cache
        from optuna.storages._grpc.auto_generated import api_pb2_grpc
        from optuna.storages._grpc.client import GrpcClientCache

        grpc = import_grpc()
        self._channel = grpc.insecure_channel(format_address(self._host, self._port), options=CHANNEL_OPTIONS)
        self._stub = PatientStub(api_pb2_grpc.StorageServiceStub(self._channel), self._channel, self.url,
                                 self._wait_s)
        self._cache = GrpcClientCache(self._stub)

    def wait_until_reachable(self, seconds: float) -> None:
        if not self._stub.wait_connected(seconds):
            self.close()
            raise StorageError(f"no storage proxy answers at {self.url} (waited {seconds:g} s); start it with "
                               "`hpo storage-proxy --storage URL`, or check the address")

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return super().create_new_trial(study_id, template_trial or self.liveness_template())

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        try:
            return super().set_trial_state_values(trial_id, state, values)
        except _CutMidway:
            pass  # the change may or may not have reached the database: read what it holds
        trial = self.get_trial(trial_id)
        if state == TrialState.RUNNING and trial.state == TrialState.RUNNING:
            # Popping a queued trial: this worker cannot tell whether it won, so it steps back; if nobody runs
            # the trial, its liveness stands still and it is failed and retried like a dead worker's.
            if LIVENESS_ATTR not in trial.system_attrs:
                self.record_heartbeat(trial_id)
            return False
        if state.is_finished() and trial.state == state and (values is None or trial.values == list(values)):
            # It landed before the cut. (A FAIL that another process set in that instant is taken for ours:
            # then the stale trial is queued twice, and both copies count in the budget like any trial.)
            return True
        if trial.state.is_finished():
            raise UpdateFinishedTrialError(f"trial id {trial_id} is already {trial.state.name}")
        return super().set_trial_state_values(trial_id, state, values)  # it never landed: send it again


def connect(url: str, *, heartbeat_interval: int, grace_period: float,
            heartbeat_stale_trial_callback: StaleTrialCallback | None) -> ProxyStorage:
    """The storage behind the proxy at grpc://HOST:PORT; StorageError (one line) when none answers."""
    host, port = proxy_address(url)
    import_grpc()
    storage = ProxyStorage(host, port, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                           heartbeat_stale_trial_callback=heartbeat_stale_trial_callback)
    storage.wait_until_reachable(_open_wait_s)
    return storage


class ProxyTrialCache(optuna.storages._CachedStorage):  # no public API: Optuna's trial cache, one call mended
    """Optuna's in-process trial cache for the proxy's database, also for trials it has not seen.

    A restarted proxy starts with an empty cache while its workers go on with trials the previous proxy
    process created; Optuna's cache answers set_trial_param for such a trial with KeyError (the worker's
    trial would fail). The database's own, uncached path takes it instead."""

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: optuna.distributions.BaseDistribution) -> None:
        try:
            super().set_trial_param(trial_id, param_name, param_value_internal, distribution)
        except KeyError:  # raised by the cache lookup, before anything is written
            # no public API reaches the storage under Optuna's cache
            self._backend.set_trial_param(trial_id, param_name, param_value_internal, distribution)


@dataclass
class ProxyServer:
    server: Any
    host: str
    port: int

    @property
    def url(self) -> str:
        return SCHEME + format_address(self.host, self.port)

    def wait(self) -> None:
        """Serve until stopped (Ctrl-C reaches this thread: the wait wakes up every fraction of a second)."""
        self.server.wait_for_termination()

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        self.server.stop(grace_s).wait()


def start_server(storage: optuna.storages.BaseStorage, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 threads: int = SERVER_THREADS) -> ProxyServer:
    """Serve ``storage`` (made by make_storage) on host:port (0: a free port); StorageError when it cannot."""
    if not 0 <= port <= 65535:
        raise StorageError(f"--port must be in 0..65535, but got {port}")
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise StorageError(f"--host {host!r} is not an address of this machine: {err.strerror}") from None
    grpc = import_grpc()
    # no public API builds Optuna's proxy server with server options (SO_REUSEPORT off)
    from optuna.storages._grpc.auto_generated import api_pb2_grpc
    from optuna.storages._grpc.servicer import OptunaStorageProxyService

    server = grpc.server(ThreadPoolExecutor(max_workers=threads, thread_name_prefix="storage-proxy"),
                         options=[("grpc.so_reuseport", 0)])
    # RDB storages get Optuna's trial cache, as Optuna advises for the proxy
    backend = ProxyTrialCache(storage) if isinstance(storage, optuna.storages.RDBStorage) else storage
    api_pb2_grpc.add_StorageServiceServicer_to_server(OptunaStorageProxyService(backend), server)
    try:
        bound = server.add_insecure_port(format_address(host, port))
    except RuntimeError:  # grpcio's "Failed to bind to address ..."
        raise StorageError(f"cannot listen on {format_address(host, port)}: the port is in use or the address is "
                           "not this machine's; stop the other server or pass another --port / --host") from None
    server.start()
    return ProxyServer(server, host, bound)
