"""Fetchers for remote Wasm modules (HTTP(S), OCI, file) and module validation."""
