"""The agent process: CLI, commands, status server, lifecycle, progress, WasmPlugin manifests."""
