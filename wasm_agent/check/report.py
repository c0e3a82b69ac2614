"""Render ``check`` results: text (default), JSON (schema in docs/check.md), JUnit XML, and
GitHub Actions ``::error`` annotations."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TextIO
from xml.etree import ElementTree as ET

from wasm_agent.check.model import Check, ModuleReport, Status

SCHEMA_VERSION = 1
_MARK = {Status.PASS: "PASS", Status.FAIL: "FAIL", Status.WARN: "WARN", Status.SKIP: "SKIP"}


def summary(reports: Sequence[ModuleReport]) -> dict[str, int]:
    """Counts over every module and check."""
    checks = [c for r in reports for c in r.checks]
    return {
        "modules": len(reports),
        "modules_failed": sum(1 for r in reports if not r.passed),
        "checks": len(checks),
        "passed": sum(1 for c in checks if c.status is Status.PASS),
        "failed": sum(1 for c in checks if c.status is Status.FAIL),
        "warnings": sum(1 for c in checks if c.status is Status.WARN),
        "skipped": sum(1 for c in checks if c.status is Status.SKIP),
    }


def _title(report: ModuleReport) -> str:
    title = report.module
    if report.plugin:
        title = f"WasmPlugin {report.plugin} ({report.module}, {report.origin})"
    facts = []
    if report.abi_version:
        facts.append(f"ABI {report.abi_version}")
    if report.kind:
        facts.append(f"{report.kind} filter" if report.kind != "none" else "no stream callbacks")
    return f"{title}" + (f" [{', '.join(facts)}]" if facts else "")


def write_text(reports: Sequence[ModuleReport], out: TextIO) -> None:
    """One line per check, details indented under failures, then a summary line."""
    for report in reports:
        out.write(f"{_title(report)}\n")
        width = max((len(c.id) for c in report.checks), default=0)
        for check in report.checks:
            where = f" ({check.location})" if check.location and check.status is Status.FAIL else ""
            out.write(f"  {_MARK[check.status]}  {check.id:<{width}}  {check.message}{where}\n")
            if check.status in (Status.FAIL, Status.WARN):
                for line in check.detail_lines:
                    out.write(f"          {line}\n")
        verdict = "passed" if report.passed else "FAILED"
        out.write(f"  => {verdict} in {report.duration_ms:.0f} ms\n\n")
    s = summary(reports)
    out.write(
        f"{s['modules']} module{'s' if s['modules'] != 1 else ''}, "
        f"{s['modules_failed']} failed; {s['checks']} check{'s' if s['checks'] != 1 else ''}: "
        f"{s['passed']} passed, {s['failed']} failed, {s['warnings']} "
        f"warning{'s' if s['warnings'] != 1 else ''}, {s['skipped']} skipped\n"
    )


def to_json(reports: Sequence[ModuleReport]) -> dict[str, Any]:
    """The ``--format json`` document (schema version 1, see docs/check.md)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "passed": all(r.passed for r in reports),
        "summary": summary(reports),
        "modules": [r.to_dict() for r in reports],
    }


def write_json(reports: Sequence[ModuleReport], out: TextIO) -> None:
    json.dump(to_json(reports), out, indent=2, default=str)
    out.write("\n")


def write_junit(reports: Sequence[ModuleReport], out: TextIO) -> None:
    """JUnit XML: one ``testsuite`` per module, one ``testcase`` per check (warnings pass
    with their message in ``system-out``; skipped checks are ``skipped``)."""

    s = summary(reports)
    total_time = sum(r.duration_ms for r in reports) / 1000
    root = ET.Element("testsuites", name="wasm-agent check", tests=str(s["checks"]),
                      failures=str(s["failed"]), errors="0", skipped=str(s["skipped"]),
                      time=f"{total_time:.3f}")  # fmt: skip
    for report in reports:
        checks = report.checks
        suite = ET.SubElement(
            root,
            "testsuite",
            name=report.plugin or report.module,
            tests=str(len(checks)),
            failures=str(sum(c.status is Status.FAIL for c in checks)),
            errors="0",
            skipped=str(sum(c.status is Status.SKIP for c in checks)),
            time=f"{report.duration_ms / 1000:.3f}",
        )
        props = ET.SubElement(suite, "properties")
        for key in ("module", "url", "sha256", "oci_digest", "abi_version", "kind"):
            value = getattr(report, key)
            if value:
                ET.SubElement(props, "property", name=key, value=_xml_text(str(value)))
        for check in checks:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"{_classname(report)}.{check.section}",
                name=_xml_text(check.name),
                time=f"{(check.duration_ms or 0) / 1000:.3f}",
            )
            if check.location:
                file, _, line = check.location.rpartition(":")
                case.set("file", file)
                case.set("line", line)
            body = _xml_text("\n".join([check.message, *check.detail_lines]))
            if check.status is Status.FAIL:
                failure = ET.SubElement(case, "failure", message=_xml_text(check.message),
                                        type="CheckFailed")  # fmt: skip
                failure.text = body
            elif check.status is Status.SKIP:
                ET.SubElement(case, "skipped", message=_xml_text(check.message))
            else:
                ET.SubElement(case, "system-out").text = body
    ET.indent(root)
    out.write('<?xml version="1.0" encoding="UTF-8"?>\n')
    out.write(ET.tostring(root, encoding="unicode"))
    out.write("\n")


def _classname(report: ModuleReport) -> str:
    name = report.plugin or report.module.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return "wasm-agent." + _xml_text(name).replace(".", "_")


def _xml_text(text: str) -> str:
    """Drop characters XML 1.0 cannot carry (plugin logs may hold control bytes)."""
    return "".join(
        ch
        if ch in "\t\n\r"
        or (" " <= ch <= "\ud7ff")
        or ("\ue000" <= ch <= "\ufffd")
        or ("\U00010000" <= ch <= "\U0010ffff")
        else "\ufffd"
        for ch in text
    )


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def github_annotations(reports: Sequence[ModuleReport]) -> list[str]:
    """``::error`` workflow commands for every failed check (file/line for spec cases and
    local modules)."""
    lines = []
    for report in reports:
        for check in report.checks:
            if check.status is not Status.FAIL:
                continue
            props = {"title": f"wasm-agent check: {check.id}"}
            file, line = _annotation_place(report, check)
            if file:
                props["file"] = file
            if line:
                props["line"] = line
            message = "\n".join([f"{report.module}: {check.message}", *check.detail_lines])
            rendered = ",".join(f"{k}={_escape_property(v)}" for k, v in props.items())
            lines.append(f"::error {rendered}::{_escape_data(message)}")
    return lines


def _annotation_place(report: ModuleReport, check: Check) -> tuple[str | None, str | None]:
    location = check.location or report.origin
    if location:
        file, _, line = location.rpartition(":")
        if line.isdigit():
            return file, line
        return location, None
    if report.url is None:
        return report.module, None
    return None, None
