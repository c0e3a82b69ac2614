"""Fault-injection helpers (``tests/faults``): the invariants checked after every fault, an
Envoy stand-in that records every config it is sent, a watcher of real Envoy's ECDS config, and
disk faults (a small or read-only filesystem, a file-size limit).

Invariants:

* :func:`assert_cache_clean`: nothing partial or stray in the cache directory;
* :func:`assert_never_forwarded`: no config Envoy received named a module file whose content
  did not match its name, or that held bytes that must never be served.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import queue
import re
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import grpc
from envoy.config.core.v3 import extension_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import duration_pb2

from tests.e2e import xds_config as xc
from tests.e2e.agentproc import AgentProcess
from tests.support.envoy import EnvoyProcess
from tests.support.plugins_wat import HEADER
from wasm_agent.xds.types import ECDS_TYPE, HTTP_WASM_TYPE
from wasm_agent.xds.upstream import SOTW_METHOD

HEX64 = re.compile(r"[0-9a-f]{64}")
NODE_ID = "sidecar~127.0.0.1~faults.default~default.svc.cluster.local"


def sha256_file(path: Path) -> str | None:
    """sha256 hex of a file's content, or None if it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return None


@contextlib.contextmanager
def short_dir(prefix: str = "wa-f-") -> Iterator[Path]:
    """A fresh directory under /tmp (Unix socket paths are limited to 107 bytes), removed
    afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- invariant: the cache is clean ------------------------------------------------------------


def locked_by_live_process(path: Path) -> bool:
    """True if some process holds a flock on ``path`` (a download still being written)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True  # committed or removed while we looked: not a leftover
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def assert_cache_clean(cache_dir: Path, *, allow_abandoned: bool = False) -> dict[str, Path]:
    """The cache holds nothing partial or stray; return ``{sha256: path}`` of its modules.

    * every ``modules/<sha256>.wasm`` hashes to its name;
    * ``modules/.tmp-*.part`` only while a live process holds its lock (a download being
      written); ``allow_abandoned`` also accepts unlocked ones (right after a crash, before a
      restarted agent cleans up; they are never read as modules);
    * nothing else in ``modules/``; an ``.index-*.tmp`` next to the index only while a writer
      holds ``index.lock`` (``allow_abandoned``: also after a crash; a purge removes them);
    * every index entry (URL record, OCI digest) points to an existing module file.
    """
    problems: list[str] = []
    modules: dict[str, Path] = {}
    directory = cache_dir / "modules"
    names = sorted(os.listdir(directory)) if directory.is_dir() else []
    for name in names:
        path = directory / name
        if name.endswith(".wasm") and HEX64.fullmatch(name[:-5]):
            actual = sha256_file(path)
            if actual is None and not path.exists():
                continue  # purged while we looked
            if actual != name[:-5]:
                problems.append(f"{path}: content hashes to {actual}, not its name")
            modules[name[:-5]] = path
        elif name.startswith(".tmp-") and name.endswith(".part"):
            if not allow_abandoned and not locked_by_live_process(path):
                problems.append(f"{path}: partial download that no live process holds")
        else:
            problems.append(f"{path}: stray file in modules/")
    if cache_dir.is_dir():
        index_temps = [n for n in os.listdir(cache_dir) if n.startswith(".index-")]
        lock = cache_dir / "index.lock"
        writing = index_temps and lock.exists() and locked_by_live_process(lock)
        if index_temps and not writing and not allow_abandoned:
            problems += [f"{cache_dir / n}: leftover index temp file" for n in index_temps]
    index = cache_dir / "index.json"
    if index.exists():
        doc = json.loads(index.read_text())
        for url, record in doc.get("urls", {}).items():
            if not (directory / f"{record['sha256']}.wasm").is_file():
                problems.append(f"index: {url} -> {record['sha256']} has no module file")
        for digest, sha in doc.get("digests", {}).items():
            if not (directory / f"{sha}.wasm").is_file():
                problems.append(f"index: digest {digest} -> {sha} has no module file")
    assert not problems, "cache not clean:\n" + "\n".join(problems)
    return modules


# -- invariant: no wrong module was ever forwarded --------------------------------------------


@dataclass(frozen=True)
class Seen:
    """A module file named by a config Envoy received, and its content's sha256 at that moment
    (None: the file was missing)."""

    where: str
    path: Path
    content_sha256: str | None


def local_filenames(config: Any) -> list[str]:
    """Every ``local.filename`` in a config: a JSON-like dict/list (Envoy's config_dump) or an
    ECDS response (SotW/Delta message or SotW bytes)."""
    if isinstance(config, bytes):
        config = discovery_pb2.DiscoveryResponse.FromString(config)
    if isinstance(config, discovery_pb2.DiscoveryResponse | discovery_pb2.DeltaDiscoveryResponse):
        if config.type_url != ECDS_TYPE:
            return []
        found: list[str] = []
        for item in config.resources:
            extension = extension_pb2.TypedExtensionConfig()
            (item.resource if hasattr(item, "resource") else item).Unpack(extension)
            if extension.typed_config.type_url == HTTP_WASM_TYPE:
                wasm = http_wasm_pb2.Wasm()
                extension.typed_config.Unpack(wasm)
                code = wasm.config.vm_config.code
                if code.HasField("local"):
                    found.append(code.local.filename)
        return found
    out: list[str] = []
    if isinstance(config, dict):
        for key, value in config.items():
            if key == "local" and isinstance(value, dict) and "filename" in value:
                out.append(value["filename"])
            else:
                out += local_filenames(value)
    elif isinstance(config, list):
        for value in config:
            out += local_filenames(value)
    return out


def observe(where: str, config: Any) -> list[Seen]:
    """Hash every module file ``config`` names, now."""
    return [Seen(where, Path(f), sha256_file(Path(f))) for f in local_filenames(config)]


def assert_never_forwarded(
    records: Any,
    bad_sha: str | Iterable[str] = (),
    *,
    allowed: Iterable[str] | None = None,
    istiod: Any = None,
    bad_versions: Iterable[str] = (),
) -> list[Seen]:
    """No config Envoy received named a file whose content did not match its name (the
    configured sha256 for HTTP modules), or whose name or content is in ``bad_sha`` (or outside
    ``allowed``, when given). ``records``: a :class:`FakeEnvoy`, an :class:`EcdsWatcher`, or an
    iterable of those and :class:`Seen`. With ``istiod`` (a FakeIstiod): Envoy never ACKed an
    ECDS response of a version in ``bad_versions``. Returns everything checked."""
    bad = {bad_sha} if isinstance(bad_sha, str) else set(bad_sha)
    good = None if allowed is None else set(allowed)
    seen: list[Seen] = []
    for record in records if isinstance(records, list | tuple) else [records]:
        seen += record.seen if hasattr(record, "seen") else [record]
    problems = []
    for item in seen:
        name = item.path.name.removesuffix(".wasm")
        if item.content_sha256 is None:
            problems.append(f"{item.where}: {item.path} did not exist when Envoy got the config")
        elif item.content_sha256 != name:
            problems.append(f"{item.where}: {item.path} holds content {item.content_sha256}")
        if {name, item.content_sha256} & bad:
            problems.append(f"{item.where}: forwarded the bad module {item.path}")
        if good is not None and name not in good:
            problems.append(f"{item.where}: forwarded {item.path}, not one of the configured")
    if istiod is not None:
        versions = set(bad_versions)
        acks = [
            r
            for r in istiod.all_requests(ECDS_TYPE)
            if r.response_nonce and not r.HasField("error_detail")
        ]
        problems += [
            f"Envoy ACKed bad version {r.version_info}" for r in acks if r.version_info in versions
        ]
    assert not problems, "a wrong module reached Envoy:\n" + "\n".join(problems)
    return seen


# -- an Envoy stand-in ------------------------------------------------------------------------


class FakeEnvoy:
    """An Envoy-like SotW ADS client on the agent's socket, subscribed to ECDS.

    Like Envoy it sends its node on the first request of each stream, reconnects when the
    stream ends (every ``delay`` seconds, at most ``max_streams`` times) and ACKs each
    response (NACKs one naming a missing file). Every response is kept (``responses``) and
    every module file it names is hashed on arrival (``seen``).
    """

    def __init__(
        self,
        socket: Path,
        *,
        delay: float = 0.2,
        max_streams: int = 300,
        logs: Callable[[], str] | None = None,
    ) -> None:
        self.logs = logs
        self.target = f"unix:{socket}"
        self.delay = delay
        self.max_streams = max_streams
        self.responses: list[discovery_pb2.DiscoveryResponse] = []
        self.seen: list[Seen] = []
        self.streams = 0
        self.ended: list[str] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._call: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> FakeEnvoy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            if self._call is not None:
                self._call.cancel()
        self._thread.join(10)

    def __enter__(self) -> FakeEnvoy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set() and self.streams < self.max_streams:
            self.streams += 1
            self._stream()
            self._stop.wait(self.delay)

    def _stream(self) -> None:
        requests: queue.Queue[bytes | None] = queue.Queue()
        first = discovery_pb2.DiscoveryRequest(type_url=ECDS_TYPE, resource_names=[xc.FILTER_NAME])
        first.node.id = NODE_ID
        first.node.cluster = "faults"
        requests.put(first.SerializeToString())

        def outgoing() -> Iterator[bytes]:
            while (item := requests.get()) is not None:
                yield item

        with grpc.insecure_channel(self.target) as channel:
            method: grpc.StreamStreamMultiCallable[bytes, bytes]
            method = channel.stream_stream(SOTW_METHOD)
            call = method(outgoing())
            self._call = call
            try:
                for raw in call:
                    response = discovery_pb2.DiscoveryResponse.FromString(raw)
                    seen = observe(f"response {response.version_info}/{response.nonce}", response)
                    reply = discovery_pb2.DiscoveryRequest(
                        type_url=response.type_url,
                        response_nonce=response.nonce,
                        resource_names=[xc.FILTER_NAME],
                        version_info=response.version_info,
                    )
                    if any(s.content_sha256 is None for s in seen):
                        reply.version_info = ""
                        reply.error_detail.code = 13
                        reply.error_detail.message = "module file missing"
                    with self._cond:
                        self.responses.append(response)
                        self.seen += seen
                        self._cond.notify_all()
                    requests.put(reply.SerializeToString())
            except grpc.RpcError as error:
                self.ended.append(f"{error.code().name}: {error.details()}")
            finally:
                requests.put(None)
                self._call = None

    def wait_version(self, version: str, timeout: float = 45.0) -> discovery_pb2.DiscoveryResponse:
        """The first response received with ``version_info == version``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for response in self.responses:
                    if response.version_info == version:
                        return response
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = self.logs() if self.logs else ""
                    raise TimeoutError(f"fake envoy: no ECDS {version} in {timeout}s\n{tail}")
                self._cond.wait(min(left, 0.2))

    def versions(self) -> list[str]:
        with self._cond:
            return [r.version_info for r in self.responses]


# -- ECDS resources ---------------------------------------------------------------------------


def extension(url: str, sha256: str = "", *, timeout: float = 30.0) -> Any:
    """The e2e Wasm TypedExtensionConfig with ``timeout`` as the fetch deadline."""
    config = xc.wasm_extension(url, sha256)
    wasm = http_wasm_pb2.Wasm()
    config.typed_config.Unpack(wasm)
    whole, frac = divmod(timeout, 1.0)
    wasm.config.vm_config.code.remote.http_uri.timeout.CopyFrom(
        duration_pb2.Duration(seconds=int(whole), nanos=int(frac * 1e9))
    )
    config.typed_config.Pack(wasm)
    return config


def push(istiod: Any, config: Any, version: str) -> list[str]:
    """Publish ``config`` at ``version`` (and the listener, once); return the ECDS nonces."""
    return xc.serve(istiod, config, version)


def wait_nack(
    istiod: Any, nonces: Iterable[str], timeout: float = 45.0, agent: Agent | None = None
) -> Any:
    """The NACK istiod received for one of ``nonces`` (on timeout: ``agent``'s log tail)."""
    wanted = set(nonces)
    try:
        return istiod.wait_for(
            lambda: [r for r in istiod.nacks(ECDS_TYPE) if r.response_nonce in wanted],
            timeout,
            f"NACK of {sorted(wanted)}",
        )[0]
    except TimeoutError as error:
        raise TimeoutError(f"{error}\n{agent.logs() if agent else ''}") from None


def answered(istiod: Any, nonce: str) -> list[Any]:
    """Every ACK or NACK istiod received for ``nonce``."""
    return [r for r in istiod.all_requests(ECDS_TYPE) if r.response_nonce == nonce]


# -- processes --------------------------------------------------------------------------------


class Agent(AgentProcess):
    """:class:`AgentProcess` in its own session, so :meth:`kill` takes its compile worker too.

    The negative cache is off (``--fetch-backoff 0``): these cases check that the agent recovers
    as soon as the fault is gone; the back-off itself is tested in tests/xds/test_negative_push.py.
    """

    def __init__(self, workdir: Path, discovery: str, *extra: str, **kwargs: Any) -> None:
        super().__init__(workdir, discovery, "--fetch-backoff", "0", *extra, **kwargs)

    def _spawn(self, log: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.workdir,
            start_new_session=True,
        )

    def _gave_up(self) -> None:
        self.kill()

    def start(self, timeout: float = 60.0) -> Agent:
        super().start(timeout)
        return self

    def kill(self) -> None:
        """SIGKILL the agent and everything in its session (as a container kill would)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        super().stop()
        if self.process is not None:  # anything left in its session (a compile worker)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def serving(self) -> bool:
        """The process is alive and its status server answers."""
        return (
            self.process is not None
            and self.process.poll() is None
            and self.status(allow_error=True) is not None
        )

    def counter(self, name: str) -> float:
        return self.metrics().get(f"istio_agent_{name}", 0.0)


class EnvoyMesh:
    """A real Envoy on ``agent``'s socket, restartable; requests through its listener."""

    def __init__(self, workdir: Path, agent: Agent, echo_port: int) -> None:
        self.workdir = workdir
        self.agent = agent
        self.echo_port = echo_port
        self.envoy: EnvoyProcess | None = None
        self.starts = 0

    def start_envoy(self) -> EnvoyProcess:
        self.starts += 1
        bootstrap = xc.bootstrap(str(self.agent.socket), self.echo_port)
        self.envoy = EnvoyProcess(bootstrap, self.workdir / f"envoy-{self.starts}")
        return self.envoy.start()

    def stop_envoy(self) -> None:
        if self.envoy is not None:
            self.envoy.stop()

    def ecds(self) -> dict[str, Any]:
        """Envoy's ECDS config dump entry ({} until it has one, or while Envoy is down)."""
        try:
            assert self.envoy is not None
            configs = self.envoy.config_dump("ecds_filters").get("configs", [])
        except (OSError, ValueError, AssertionError):
            return {}
        return configs[0] if configs else {}

    def wait_ecds_version(self, version: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            config = self.ecds()
            if config.get("version_info") == version:
                return config
            time.sleep(0.05)
        raise TimeoutError(f"envoy: no ECDS {version} in {timeout}s\n{self.agent.logs()}")

    def header(self, timeout: float = 30.0) -> str | None:
        """The plugin's response header on a request through Envoy (retrying while warming)."""
        import urllib.request

        assert self.envoy is not None
        deadline = time.monotonic() + timeout
        error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                port = self.envoy.listener_port(xc.LISTENER_NAME)
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/x", timeout=5) as r:
                    return {k.lower(): v for k, v in r.headers.items()}.get(HEADER)
            except (OSError, TimeoutError) as exc:
                error = exc
                time.sleep(0.1)
        raise AssertionError(f"no response through envoy: {error}")

    def header_becomes(self, value: str, timeout: float = 45.0) -> None:
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            seen = self.header()
            if seen == value:
                return
            time.sleep(0.1)
        raise AssertionError(f"expected {HEADER}={value}, saw {seen}\n{self.agent.logs()}")


class EcdsWatcher:
    """Polls a real Envoy's ECDS config dump (every ``interval`` s) in a thread and hashes
    each module file the moment a new config names it (``seen``)."""

    def __init__(self, mesh: EnvoyMesh, interval: float = 0.05) -> None:
        self.mesh = mesh
        self.interval = interval
        self.seen: list[Seen] = []
        self._last: tuple[str, str] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            config = self.mesh.ecds()
            if not config:
                continue
            key = (config.get("version_info", ""), json.dumps(config.get("ecds_filter")))
            if key != self._last:
                self._last = key
                self.seen += observe(f"envoy {self.mesh.starts} ECDS {key[0]}", config)

    def __enter__(self) -> EcdsWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


# -- disk faults ------------------------------------------------------------------------------

_MOUNT_OK: bool | None = None


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=20)


def can_mount() -> bool:
    """Whether this process may mount a tmpfs (root with CAP_SYS_ADMIN, no seccomp block).
    ``FAULTS_NO_MOUNT=1`` in the environment forces the fallbacks."""
    global _MOUNT_OK
    if os.environ.get("FAULTS_NO_MOUNT") == "1":
        return False
    if _MOUNT_OK is None:
        with short_dir("wa-mnt-") as probe:
            _MOUNT_OK = (
                _run("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)).returncode == 0
            )
            if _MOUNT_OK:
                _run("umount", str(probe))
    return _MOUNT_OK


class SmallFs:
    """A tmpfs of ``size`` bytes mounted on ``path`` (:func:`can_mount` must be true)."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.mounted = False

    def __enter__(self) -> SmallFs:
        self.path.mkdir(parents=True, exist_ok=True)
        result = _run(
            "mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0700", "tmpfs", str(self.path)
        )
        assert result.returncode == 0, result.stderr
        self.mounted = True
        return self

    def remount(self, option: str) -> None:
        """``ro``, ``rw`` or ``size=N``; retried briefly while files are open for writing."""
        result = None
        for _ in range(50):
            result = _run("mount", "-o", f"remount,{option}", str(self.path))
            if result.returncode == 0:
                return
            time.sleep(0.1)
        raise AssertionError(f"remount {option} failed: {result and result.stderr}")

    def __exit__(self, *exc: object) -> None:
        if self.mounted:
            result = _run("umount", str(self.path))
            if result.returncode != 0:
                _run("umount", "-l", str(self.path))
            self.mounted = False


class ReadOnly:
    """Makes a cache directory unwritable and writable again, even for root: a tmpfs
    remounted read-only when mounting is permitted, else ``chattr +i`` on ``modules/`` and
    ``locks/`` (immutable directories: no file can be created in them)."""

    def __init__(self, cache_dir: Path, fs: SmallFs | None) -> None:
        self.cache_dir = cache_dir
        self.fs = fs
        self.how = "tmpfs remounted read-only" if fs else "chattr +i"
        self.expected_error = "Read-only file system" if fs else "Operation not permitted"

    def _chattr(self, flag: str) -> None:
        for sub in ("modules", "locks"):
            result = _run("chattr", flag, str(self.cache_dir / sub))
            assert result.returncode == 0, result.stderr

    def on(self) -> None:
        if self.fs is not None:
            self.fs.remount("ro")
        else:
            self._chattr("+i")

    def off(self) -> None:
        if self.fs is not None:
            self.fs.remount("rw")
        else:
            self._chattr("-i")


def limit_file_size(pid: int, size: int | None) -> None:
    """Set (or, with None, lift) the soft RLIMIT_FSIZE of the running process ``pid`` (the
    hard limit stays, so lifting needs no CAP_SYS_RESOURCE). Python ignores SIGXFSZ, so an
    oversized write fails with EFBIG ("File too large")."""
    _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard if size is None else size, hard))


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` every 20 ms until truthy; raise on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(f"{what}: not met in {timeout}s")
