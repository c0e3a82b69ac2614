"""List, verify and prune the module cache.

``ls`` lists every module (sha256, size, last use, whether some process uses it, URLs).
``verify`` re-hashes every module file against its name (its sha256); a corrupt file is moved
to ``<cache dir>/quarantine/`` so it is never served again (``--no-quarantine`` only reports).
It also checks the index against the files (that it can be read, every entry's MAC, every
URL's checksum, every entry's module file present) and the directory's permissions, and reports
every mismatch; in a cache others may write (or holding a link) it reports that and moves nothing.
``ls`` and ``prune`` refuse such a cache (exit 1), as every other command does.
``prune`` removes modules unused for ``WASM_MODULE_EXPIRY`` (24h; ``--older-than`` overrides,
``--all-unused`` means any age) that no process holds: in-use modules are always kept.
Exit status: 0 ok, 1 corrupt files found, the cache directory is not a directory or cannot be
read or changed, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from typing import Any

from wasm_agent.agent.cli import EXIT_FAILED, EXIT_OK, EXIT_RULE, add_log_flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``cache`` subcommands and their flags."""
    from wasm_agent.core.config import CACHE_DIR

    cache_dir_help = f"{CACHE_DIR.help} [env {CACHE_DIR.env}]"  # as the other commands say it
    # accepted before the action too (``cache --cache-dir D ls``); separate dests, because a
    # subparser's default would overwrite the value given before the action
    parser.add_argument("--cache-dir", dest="cache_dir_before", metavar="DIR", help=cache_dir_help)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache-dir", metavar="DIR", help=cache_dir_help)
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_log_flags(common, again=True)  # ``cache ls --log-level debug`` as well as before ``ls``
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("ls", parents=[common], help="list cached modules", epilog=EXIT_RULE)
    verify = sub.add_parser(
        "verify", parents=[common], help="re-check every module's sha256", epilog=EXIT_RULE
    )
    verify.add_argument(
        "--no-quarantine",
        action="store_true",
        help="only report corrupt files (default move them to <cache dir>/quarantine/)",
    )
    prune = sub.add_parser(
        "prune", parents=[common], help="remove expired modules that nothing uses", epilog=EXIT_RULE
    )
    age = prune.add_mutually_exclusive_group()
    age.add_argument(
        "--older-than",
        metavar="DURATION",
        help="remove modules unused for this long (default 24h) [env WASM_MODULE_EXPIRY]",
    )
    age.add_argument(
        "--all-unused", action="store_true", help="remove every module no process uses"
    )
    prune.add_argument("--dry-run", action="store_true", help="only show what would go")


def run(args: argparse.Namespace) -> int:
    """Run one cache subcommand."""
    from wasm_agent.agent.fetch_settings import fetch_settings_from_env
    from wasm_agent.cache import ModuleCache
    from wasm_agent.core.settings import cache_settings_from_env, parse_duration

    if args.log_level != "debug":  # every outcome is printed; the cache's logs would repeat it
        logging.getLogger("wasm_agent.cache").setLevel(logging.ERROR)
    # settings errors are usage errors: cli.main exits 2
    settings = cache_settings_from_env(args.cache_dir or args.cache_dir_before)
    if getattr(args, "older_than", None) is not None:
        expiry = parse_duration(args.older_than, "--older-than")
        settings = replace(settings, module_expiry=expiry)
    elif getattr(args, "all_unused", False):
        settings = replace(settings, module_expiry=0.0)
    problem = _not_a_directory(settings.directory)
    if problem:
        print(f"wasm-agent cache {args.action}: {problem}", file=sys.stderr)
        return EXIT_FAILED
    try:
        cache = ModuleCache(settings, fetch_settings_from_env())
        if args.action != "verify":  # verify reports it among the other problems
            from wasm_agent.cache.integrity import check_tree

            check_tree(cache.layout)  # InsecureCache: others may write it, or a link
        if args.action == "ls":
            return _ls(cache, args.json)
        if args.action == "verify":
            return _verify(cache, args.json, not args.no_quarantine)
        return _prune(cache, args.json, args.dry_run)
    except OSError as error:
        print(f"wasm-agent cache {args.action}: {_os_error(error)}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as error:  # FetchError (CacheWriteError) and friends: a clear message
        cause = getattr(error, "cause", None) or str(error)
        print(f"wasm-agent cache {args.action}: {cause}", file=sys.stderr)
        return EXIT_FAILED


def _not_a_directory(directory: Any) -> str | None:
    """Why the cache directory cannot be one (it, or a parent, is a file), else None."""
    from pathlib import Path

    path = Path(directory)
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            if candidate.is_dir():
                return None
            what = "" if candidate == path else f"cannot be a directory: {candidate} is "
            return f"{path}: {what}not a directory"
    return None


def _os_error(error: OSError) -> str:
    """``PATH: reason`` without the errno number."""
    reason = error.strerror or str(error)
    return f"{error.filename}: {reason}" if error.filename else reason


# -- ls -------------------------------------------------------------------------------------


def _entry_json(entry: Any) -> dict[str, Any]:
    return {
        "sha256": entry.sha256,
        "path": str(entry.path),
        "size": entry.size,
        "last_used": entry.last_used,
        "last_used_utc": _utc(entry.last_used),
        "in_use": entry.in_use,
        "urls": list(entry.urls),
    }


def _ls(cache: Any, as_json: bool) -> int:
    entries = sorted(cache.entries(), key=lambda e: e.last_used, reverse=True)
    if as_json:
        _dump([_entry_json(e) for e in entries])
        return EXIT_OK
    if not entries:
        print(f"no modules in {cache.layout.root}")
        return EXIT_OK
    now = time.time()
    rows = [
        [
            e.sha256[:12],
            _size(e.size),
            f"{_utc(e.last_used)} ({_ago(now - e.last_used)} ago)",
            "yes" if e.in_use else "no",
            ", ".join(e.urls) or "-",
        ]
        for e in entries
    ]
    _table(["SHA256", "SIZE", "LAST USED (UTC)", "IN USE", "URL"], rows)
    total = sum(e.size for e in entries)
    print(f"{_count(len(entries))}, {_size(total)}, in {cache.layout.modules}")
    return EXIT_OK


# -- verify ---------------------------------------------------------------------------------


def _verify(cache: Any, as_json: bool, quarantine: bool) -> int:
    from wasm_agent.cache.audit import audit_index, verify_modules
    from wasm_agent.cache.integrity import InsecureCache, check_tree

    secure = True
    try:
        check_tree(cache.layout)
        problems = audit_index(cache.index)
    except InsecureCache as error:  # the index is not read, nothing is moved
        problems, secure = [error.cause], False
    urls = {e.sha256: e.urls for e in cache.entries()} if secure else {}
    results = verify_modules(
        cache.layout,
        quarantine=quarantine and secure,
        max_bytes=cache.fetch_settings.max_binary_size,
    )
    bad = [r for r in results if not r.ok]
    if as_json:
        _dump(
            [
                {
                    "kind": "module",
                    "sha256": r.sha256,
                    "path": str(r.path),
                    "ok": r.ok,
                    "actual_sha256": r.actual,
                    "size": r.size,
                    "quarantined": str(r.quarantined) if r.quarantined else None,
                    "error": r.error or None,
                    "urls": list(urls.get(r.sha256, ())),
                }
                for r in results
            ]
            + [{"kind": "index", "sha256": None, "ok": False, "error": p} for p in problems]
        )
    else:
        for r in results:
            url = ", ".join(urls.get(r.sha256, ())) or "-"
            if r.ok:
                print(f"ok       {r.sha256[:12]}  {_size(r.size):>9}  {url}")
        print(f"{_count(len(results))} checked, {len(bad)} bad, in {cache.layout.modules}")
        if problems:
            print(f"{len(problems)} index or permission problem(s), in {cache.layout.root}")
    for problem in problems:
        print(f"wasm-agent cache verify: {problem}", file=sys.stderr)
    for r in bad:
        url = ", ".join(urls.get(r.sha256, ())) or "no known URL"
        what = f"cannot read it: {r.error}" if r.error else f"content hashes to {r.actual}"
        print(f"wasm-agent cache verify: CORRUPT {r.path} ({url}): {what}", file=sys.stderr)
        if r.quarantined:
            print(
                f"wasm-agent cache verify: moved to {r.quarantined}; it will be downloaded again",
                file=sys.stderr,
            )
    return EXIT_FAILED if bad or problems else EXIT_OK


# -- prune ----------------------------------------------------------------------------------


def _prune(cache: Any, as_json: bool, dry_run: bool) -> int:
    expiry = cache.settings.module_expiry
    present = cache.layout.modules.is_dir()  # never create a cache just to prune it
    entries = cache.entries() if present else []
    now = time.time()
    expired = [e for e in entries if now - e.last_used > expiry]
    if dry_run:
        removed = {e.path for e in expired if not e.in_use}
    else:  # purge re-checks age and locks per file, and clears crashed downloads' temp files
        removed = set(cache.purge(now)) if present else set()
    kept_in_use = [e for e in expired if e.path not in removed and e.in_use]
    gone = [e for e in expired if e.path in removed]
    if as_json:
        _dump(
            {
                "dry_run": dry_run,
                "expiry_seconds": expiry,
                "removed": [_entry_json(e) for e in gone],
                "kept_in_use": [_entry_json(e) for e in kept_in_use],
                "kept": len(entries) - len(gone),
            }
        )
        return EXIT_OK
    verb = "would remove" if dry_run else "removed"
    for e in gone:
        print(f"{verb} {e.sha256[:12]}  {_size(e.size):>9}  {', '.join(e.urls) or '-'}")
    for e in kept_in_use:
        print(f"kept (in use) {e.sha256[:12]}  {', '.join(e.urls) or '-'}")
    freed = sum(e.size for e in gone)
    print(
        f"{verb} {_count(len(gone))} ({_size(freed)}) unused for more than {_ago(expiry)}; "
        f"{len(entries) - len(gone)} kept ({len(kept_in_use)} expired but in use)"
    )
    return EXIT_OK


# -- formatting -----------------------------------------------------------------------------


def _dump(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)]
        print("  ".join([*cells, row[-1]]))


def _count(number: int) -> str:
    return f"{number} module" if number == 1 else f"{number} modules"


def _utc(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(stamp))


def _ago(seconds: float) -> str:
    """``90`` -> ``2m``: a rough age."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024 or unit == "MiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
