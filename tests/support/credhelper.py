"""Docker credential helper executables written by tests (``docker-credential-<name>``).

Each helper is a small ``/bin/sh`` script in a directory the test puts first on ``PATH``. It
records what it read on stdin and how often it ran, then behaves as asked::

    helpers = HelperDir(tmp_path / "bin")
    monkeypatch.setenv("PATH", helpers.path_with(os.environ["PATH"]))
    helpers.add("good", username="alice", secret="pw")      # prints the JSON answer
    helpers.add("ident", username="<token>", secret="refresh-token")
    helpers.add("hang", behaviour="hang")                    # never answers (and has a child)
    helpers.add("fail", behaviour="fail", secret="pw")       # exit 1, the secret on stderr
    helpers.add("junk", behaviour="garbage", secret="pw")    # not JSON, the secret in it
    helpers.add("none", behaviour="notfound")                # "credentials not found", exit 1
    helpers.runs("good"), helpers.stdin("good"), helpers.child_pid("hang")
"""

from __future__ import annotations

import json
import os
import shlex
import stat
from pathlib import Path

BEHAVIOURS = ("answer", "hang", "fail", "garbage", "notfound")


class HelperDir:
    """A directory of helper scripts; see the module docstring."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def path_with(self, path: str) -> str:
        """``PATH`` with this directory first."""
        return f"{self.directory}{os.pathsep}{path}"

    def _file(self, name: str, suffix: str) -> Path:
        return self.directory / f"{name}.{suffix}"

    def add(
        self,
        name: str,
        *,
        behaviour: str = "answer",
        username: str = "",
        secret: str = "",
        server_url: str = "",
    ) -> Path:
        """Write ``docker-credential-<name>`` (executable) and return its path."""
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}")
        answer = self._file(name, "answer")
        answer.write_text(
            json.dumps({"ServerURL": server_url, "Username": username, "Secret": secret})
        )
        secret_file = self._file(name, "secret")
        secret_file.write_text(secret)
        q = shlex.quote
        lines = [
            "#!/bin/sh",
            f"cat > {q(str(self._file(name, 'stdin')))}",
            f"echo run >> {q(str(self._file(name, 'count')))}",
        ]
        if behaviour == "answer":
            lines.append(f"cat {q(str(answer))}")
        elif behaviour == "hang":
            pid = q(str(self._file(name, "child")))
            lines += ["sleep 30 &", f"echo $! > {pid}", "wait"]
        elif behaviour == "fail":
            lines += [f"cat {q(str(secret_file))} >&2", "exit 1"]
        elif behaviour == "garbage":
            lines += ["printf '<html>Username='", f"cat {q(str(secret_file))}"]
        else:
            lines += ["echo 'credentials not found in native keychain'", "exit 1"]
        script = self.directory / f"docker-credential-{name}"
        script.write_text("\n".join(lines) + "\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return script

    def runs(self, name: str) -> int:
        """How many times the helper ran."""
        path = self._file(name, "count")
        return len(path.read_text().splitlines()) if path.exists() else 0

    def stdin(self, name: str) -> str:
        """What the helper read on stdin the last time it ran."""
        return self._file(name, "stdin").read_text()

    def child_pid(self, name: str) -> int | None:
        """The pid of the child a ``hang`` helper started, once written."""
        path = self._file(name, "child")
        text = path.read_text().strip() if path.exists() else ""
        return int(text) if text else None
