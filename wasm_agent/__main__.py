"""``python -m wasm_agent`` runs the CLI."""

from wasm_agent.agent.cli import main

raise SystemExit(main())
