"""Run one fuzz target for a bounded time or number of inputs, and report what happened.

Usage::

    python tests/fuzz/run.py TARGET [--seconds N | --runs N] [--engine auto|atheris|random]
        [--timeout S] [--rss-growth-mb M] [--corpus DIR] [--jobs-dir DIR] [--json]

The target runs in a child process (a crash of the interpreter, e.g. a bad host write, is a
finding and not a crash of the runner). Engines: ``atheris`` (coverage-guided libFuzzer over the
instrumented ``wasm_agent`` code, the default when importable) and ``random`` (a mutation fuzzer
over the same seed corpus: bit flips, byte edits, interesting integers, splices). The seed
corpus is ``tests/fuzz/corpus/TARGET`` (written by ``make_corpus.py``); ``--corpus DIR`` keeps
the inputs a long campaign discovers (atheris adds new coverage there).

Prints the inputs executed, findings, RSS at the start and end of the measured window and its
growth. Exit status: 0 clean; 1 a finding (an exception outside the target's ``ALLOWED``, a
crash, an input over ``--timeout`` seconds, a whole run over its wall-clock bound, or RSS growth
over ``--rss-growth-mb`` after the warm-up); 2 usage errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fuzz.targets import NAMES  # noqa: E402

CORPUS = HERE / "corpus"
WARMUP = 1.0  # seconds of fuzzing before the RSS baseline is taken
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclasses.dataclass
class FuzzResult:
    """What one run did; ``ok`` when there was no finding."""

    target: str
    engine: str
    runs: int = 0
    seconds: float = 0.0
    allowed_errors: int = 0  # inputs that raised one of the target's documented errors
    rss_start_mb: float = 0.0  # after the warm-up
    rss_end_mb: float = 0.0
    rss_growth_mb: float = 0.0
    peak_rss_mb: float = 0.0
    corpus_seeds: int = 0
    finding: str = ""  # what went wrong ("" when clean)
    artifact: str = ""  # the input that caused it
    returncode: int = 0

    @property
    def ok(self) -> bool:
        return not self.finding

    def summary(self) -> str:
        rate = self.runs / self.seconds if self.seconds else 0.0
        text = (
            f"{self.target}: engine={self.engine} runs={self.runs} in {self.seconds:.1f}s "
            f"({rate:.0f}/s), documented errors {self.allowed_errors}, "
            f"RSS {self.rss_start_mb:.1f} -> {self.rss_end_mb:.1f} MB "
            f"(growth {self.rss_growth_mb:+.1f} MB, peak {self.peak_rss_mb:.1f} MB), "
            f"seeds {self.corpus_seeds}"
        )
        return text + (f"; FINDING: {self.finding}" if self.finding else "; no findings")


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * _PAGE / 2**20


class _Stats:
    """Counts inputs in the child and writes them to a JSON file now and then."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.runs = 0
        self.allowed = 0
        self.first = 0.0
        self.rss_start = 0.0
        self.rss_max_after = 0.0
        self.rss_end = 0.0
        self._last_write = 0.0

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.first:
            self.first = now
        if not force and (self.runs & 63) and now - self._last_write < 0.2:
            return
        if not force and now - self._last_write < 0.2:
            return
        rss = _rss_mb()
        if not self.rss_start and now - self.first >= WARMUP:
            self.rss_start = rss
        if self.rss_start:
            self.rss_max_after = max(self.rss_max_after, rss)
        self.rss_end = rss
        self._last_write = now
        data = {
            "runs": self.runs,
            "allowed": self.allowed,
            "seconds": now - self.first,
            "rss_start": self.rss_start or rss,
            "rss_max_after": self.rss_max_after or rss,
            "rss_end": rss,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.path)


def _seeds(corpus_dirs: list[Path]) -> list[bytes]:
    seeds = []
    for directory in corpus_dirs:
        for path in sorted(directory.iterdir()) if directory.is_dir() else []:
            if path.is_file():
                seeds.append(path.read_bytes())
    return seeds or [b""]


# -- the random-mutation engine --------------------------------------------------------------

_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF]


def mutate(data: bytes, rng: random.Random, seeds: list[bytes], max_len: int) -> bytes:
    """One to four random edits of ``data`` (libFuzzer's basic mutations, without coverage)."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(8)
        at = rng.randrange(len(out) + 1)
        if kind == 0 and out:  # flip a bit
            at %= len(out)
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 1 and out:  # random byte
            out[at % len(out)] = rng.randrange(256)
        elif kind == 2:  # insert bytes
            out[at:at] = rng.randbytes(rng.randint(1, 8))
        elif kind == 3 and out:  # delete a run
            del out[at : at + rng.randint(1, 16)]
        elif kind == 4 and len(out) >= 4:  # an interesting 32-bit value
            at = rng.randrange(len(out) - 3)
            value = rng.choice(_INTERESTING) + rng.choice((0, 0, -1, 1))
            out[at : at + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
        elif kind == 5:  # splice in part of another seed
            other = rng.choice(seeds)
            if other:
                start = rng.randrange(len(other))
                out[at:at] = other[start : start + rng.randint(1, 64)]
        elif kind == 6 and out:  # duplicate a chunk
            start = rng.randrange(len(out))
            out[at:at] = out[start : start + rng.randint(1, 32)]
        elif kind == 7:  # truncate
            del out[at:]
    return bytes(out[:max_len])


class _Hang(BaseException):
    pass


def _child_random(module, stats: _Stats, args: argparse.Namespace, corpus: list[Path]) -> int:
    seeds = _seeds(corpus)
    rng = random.Random(args.seed)
    deadline = time.monotonic() + args.seconds if args.seconds else float("inf")

    def on_alarm(_signum, _frame):
        raise _Hang()

    signal.signal(signal.SIGALRM, on_alarm)
    pool = list(seeds)
    index = 0
    while (args.runs is None or stats.runs < args.runs) and time.monotonic() < deadline:
        if index < len(seeds):
            data = seeds[index]  # every seed once, as libFuzzer does
            index += 1
        else:
            data = mutate(rng.choice(pool), rng, seeds, module.MAX_LEN)
        signal.setitimer(signal.ITIMER_REAL, args.timeout)
        try:
            _one(module, stats, data)
        except _Hang:
            return _report_finding(args, data, f"input ran longer than {args.timeout}s")
        except BaseException as exc:
            signal.setitimer(signal.ITIMER_REAL, 0)
            detail = "".join(traceback.format_exception(exc))
            return _report_finding(args, data, f"{type(exc).__name__}: {exc}", detail)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if len(pool) < 4096 and rng.random() < 0.01:
            pool.append(data)  # keep a few mutants to mutate further
    stats.tick(force=True)
    return 0


def _report_finding(args, data: bytes, what: str, detail: str = "") -> int:
    artifact = Path(args.artifacts) / "crash-input"
    artifact.write_bytes(data)
    sys.stderr.write(detail)
    sys.stderr.write(f"\nFINDING: {what}\nInput written to {artifact}\n")
    return 1


_INJECT = {"mode": ""}  # runner self-test: "crash" or "hang" on the first input


def _one(module, stats: _Stats, data: bytes) -> None:
    stats.runs += 1
    if _INJECT["mode"] == "crash":
        raise RuntimeError("injected crash (runner self-test)")
    if _INJECT["mode"] == "hang":
        time.sleep(3600)
    try:
        module.fuzz_one(data)
    except module.ALLOWED:
        stats.allowed += 1
    stats.tick()


def _child(args: argparse.Namespace) -> int:
    stats = _Stats(Path(args.stats))
    _INJECT["mode"] = args.inject or ""
    corpus = [Path(p) for p in args.corpus_dirs]
    if args.engine == "random":
        module = importlib.import_module(f"tests.fuzz.targets.{args.target}")
        return _child_random(module, stats, args, corpus)
    import atheris

    with atheris.instrument_imports(include=["wasm_agent", "tests.fuzz.targets"]):
        module = importlib.import_module(f"tests.fuzz.targets.{args.target}")

    def test_one(data: bytes) -> None:
        _one(module, stats, data)

    libfuzzer = [
        sys.argv[0],
        f"-timeout={max(1, round(args.timeout))}",
        f"-max_len={module.MAX_LEN}",
        f"-artifact_prefix={args.artifacts}/",
        f"-seed={args.seed}",
        "-print_final_stats=1",
        "-rss_limit_mb=2048",
        "-close_fd_mask=0",
        # wasmtime turns SIGSEGV/SIGILL/SIGFPE into wasm traps: leave them to it
        "-handle_segv=0",
        "-handle_bus=0",
        "-handle_ill=0",
        "-handle_fpe=0",
    ]
    libfuzzer.append(f"-runs={args.runs}" if args.runs is not None else "-runs=-1")
    if args.seconds:
        libfuzzer.append(f"-max_total_time={max(1, round(args.seconds))}")
    atheris.Setup(libfuzzer + [str(p) for p in corpus], test_one)
    atheris.Fuzz()
    return 0  # not reached: libFuzzer exits


def _engine(choice: str) -> str:
    if choice != "auto":
        return choice
    try:
        import atheris  # noqa: F401
    except ImportError:
        return "random"
    return "atheris"


_STAT = re.compile(r"^stat::(\w+):\s*(\d+)", re.M)


def run_target(
    target: str,
    *,
    seconds: float | None = None,
    runs: int | None = None,
    engine: str = "auto",
    timeout: float = 5.0,
    rss_growth_mb: float = 64.0,
    corpus: Path | None = None,
    wall_slack: float = 60.0,
    seed: int = 1,
    keep: Path | None = None,
    inject: str = "",
) -> FuzzResult:
    """Fuzz ``target`` in a child process; the result says what ran and any finding."""
    if target not in NAMES:
        raise ValueError(f"unknown target {target!r}; known: {', '.join(NAMES)}")
    if seconds is None and runs is None:
        raise ValueError("give seconds or runs")
    engine = _engine(engine)
    seeds_dir = CORPUS / target
    if not seeds_dir.is_dir():
        from tests.fuzz.make_corpus import write_corpus

        write_corpus(target)
    work = Path(tempfile.mkdtemp(prefix=f"fuzz-{target}-")) if keep is None else keep
    work.mkdir(parents=True, exist_ok=True)
    artifacts = work / "artifacts"
    artifacts.mkdir(exist_ok=True)
    # atheris writes new inputs to the first corpus directory: a scratch (or --corpus) one
    found = corpus if corpus is not None else work / "corpus"
    found.mkdir(parents=True, exist_ok=True)
    stats_path = work / "stats.json"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        target,
        "--child",
        "--engine",
        engine,
        "--timeout",
        str(timeout),
        "--seed",
        str(seed),
        "--stats",
        str(stats_path),
        "--artifacts",
        str(artifacts),
    ]
    if seconds is not None:
        command += ["--seconds", str(seconds)]
    if runs is not None:
        command += ["--runs", str(runs)]
    if inject:
        command += ["--inject", inject]
    command += ["--corpus-dirs", str(found), str(seeds_dir)]
    wall = (seconds or 0) + wall_slack + (runs or 0) * 0.01
    result = FuzzResult(target, engine)
    result.corpus_seeds = sum(1 for p in seeds_dir.iterdir() if p.is_file())
    started = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=wall, cwd=ROOT, env=env
        )
        output, result.returncode = proc.stderr + proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as exc:
        output = (exc.stderr or b"").decode(errors="replace") if exc.stderr else ""
        result.returncode = -1
        result.finding = f"the run took longer than {wall:.0f}s (hang)"
    elapsed = time.monotonic() - started
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    result.runs = stats.get("runs", 0)
    result.allowed_errors = stats.get("allowed", 0)
    result.seconds = stats.get("seconds", elapsed)
    result.rss_start_mb = stats.get("rss_start", 0.0)
    result.rss_end_mb = stats.get("rss_end", 0.0)
    result.rss_growth_mb = max(0.0, stats.get("rss_max_after", 0.0) - result.rss_start_mb)
    result.peak_rss_mb = stats.get("rss_max_after", 0.0)
    final = dict(_STAT.findall(output))
    if "number_of_executed_units" in final:
        result.runs = max(result.runs, int(final["number_of_executed_units"]))
    if "peak_rss_mb" in final:
        result.peak_rss_mb = max(result.peak_rss_mb, float(final["peak_rss_mb"]))
    if not result.finding and result.returncode != 0:
        lines = [ln for ln in output.splitlines() if ln.strip()]
        why = [ln for ln in lines if "FINDING" in ln or "ERROR: libFuzzer" in ln or "Error" in ln]
        why = [ln.removeprefix("FINDING: ") for ln in why]
        result.finding = (why or lines[-1:] or [f"exit status {result.returncode}"])[-1][:300]
        result.finding += f" (exit status {result.returncode})"
        sys.stderr.write(output[-6000:])
    if not result.finding and result.rss_growth_mb > rss_growth_mb:
        result.finding = (
            f"RSS grew {result.rss_growth_mb:.1f} MB after the warm-up (bound {rss_growth_mb} MB)"
        )
    crashes = sorted(p for p in artifacts.iterdir())
    if crashes:
        result.artifact = str(crashes[0])
        if not result.finding:
            result.finding = f"libFuzzer wrote {crashes[0].name}"
    if keep is None and result.ok:
        shutil.rmtree(work, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help=f"one of: {', '.join(NAMES)}")
    bound = parser.add_mutually_exclusive_group()
    bound.add_argument("--seconds", type=float, help="fuzz this long (default 10)")
    bound.add_argument("--runs", type=int, help="fuzz this many inputs")
    parser.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    parser.add_argument("--timeout", type=float, default=5.0, help="per input, seconds")
    parser.add_argument("--rss-growth-mb", type=float, default=64.0)
    parser.add_argument("--corpus", type=Path, help="keep discovered inputs here")
    parser.add_argument("--keep", type=Path, help="working directory to keep (artifacts)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--inject", choices=("crash", "hang"), help=argparse.SUPPRESS)
    parser.add_argument("--stats", help=argparse.SUPPRESS)
    parser.add_argument("--artifacts", help=argparse.SUPPRESS)
    parser.add_argument("--corpus-dirs", nargs="*", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.target not in NAMES:
        parser.error(f"unknown target {args.target!r}; known: {', '.join(NAMES)}")
    if args.child:
        return _child(args)
    if args.seconds is None and args.runs is None:
        args.seconds = 10.0
    result = run_target(
        args.target,
        seconds=args.seconds,
        runs=args.runs,
        engine=args.engine,
        timeout=args.timeout,
        rss_growth_mb=args.rss_growth_mb,
        corpus=args.corpus,
        seed=args.seed,
        keep=args.keep,
    )
    print(json.dumps(dataclasses.asdict(result)) if args.json else result.summary())
    if result.artifact:
        print(f"input: {result.artifact}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
