"""Start-up checks of directories a flag names: missing or not a directory is a usage error."""

from __future__ import annotations

from pathlib import Path

from wasm_agent.core.errors import UsageError


def existing_directory(name: str, value: str | Path) -> Path:
    """``value`` as an existing directory, else :class:`UsageError` naming ``name`` (a flag,
    or a flag and its variable) and the path (the CLI exits 2)."""
    path = Path(value).expanduser()
    try:
        if path.is_dir():
            return path
        exists = path.exists()
    except OSError as error:  # a path component we may not search
        raise UsageError(f"{name} {value}: cannot inspect: {error.strerror}") from None
    if exists:
        raise UsageError(f"{name} {value}: not a directory")
    raise UsageError(f"{name} {value}: no such directory")


def flag_name(flag: str, env_name: str, value: object, env_value: str | None) -> str:
    """``flag``, or ``flag [env NAME]`` when ``value`` came from the variable ``env_name``
    (the variable is the flag's default), so a message points at where the value was set."""
    if env_value is not None and env_value.strip() and str(value) == env_value.strip():
        return f"{flag} [env {env_name}]"
    return flag
