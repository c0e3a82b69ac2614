#!/usr/bin/env bash
# Build deploy/Dockerfile with rootful podman and run the image as the manifests do: read-only
# root filesystem, UID 65532. Made for a Debian CI machine with no Docker daemon and no container
# registry: the base image is imported from a Debian rootfs built with mmdebstrap (cached).
#
# Usage: bash deploy/image/check.sh [REPO]      (REPO: the repository root, default: this one)
# Needs root (rootful podman, apt-get). Environment:
#   WASM_AGENT_ROOTFS_CACHE_DIR  where the rootfs tarball is kept (default /var/cache/wasm-agent-ci)
#   WASM_AGENT_IMAGE             tag to build (default localhost/wasm-agent:ci)
# Exit codes: 0 every step passed, 1 a step failed (named on stderr), 2 usage error.
set -Eeuo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "${1:-$here/../..}" 2>/dev/null && pwd) || { echo "usage: $0 [REPO]: no such directory: ${1:-}" >&2; exit 2; }
dockerfile=$repo/deploy/Dockerfile
[ -f "$dockerfile" ] || { echo "usage: $0 [REPO]: $dockerfile not found" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "$0: needs root (rootful podman, apt-get)" >&2; exit 2; }
cache_dir=${WASM_AGENT_ROOTFS_CACHE_DIR:-/var/cache/wasm-agent-ci}
image=${WASM_AGENT_IMAGE:-localhost/wasm-agent:ci}
uid=65532
run_id=wa-ci-$$

t0=$SECONDS
step_name="start"
step_t0=$SECONDS
timings=()
step() { # step NAME [DETAIL]: close the previous step's timing, open the next one
  [ "$step_name" = start ] || timings+=("$step_name=$((SECONDS - step_t0))s")
  step_name=$1
  step_t0=$SECONDS
  echo "== [$((SECONDS - t0))s] $*"
}
fail() {
  trap - ERR
  echo "FAILED in step '$step_name': $*" >&2
  exit 1
}
trap 'echo "FAILED in step '"'"'$step_name'"'"': command exited $? (line $LINENO): $BASH_COMMAND" >&2' ERR

work=$(mktemp -d)
server_pid=""
cleanup() {
  trap - ERR
  set +e
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null; fi
  if command -v podman >/dev/null; then
    podman rm -f --ignore "$run_id-proxy" >/dev/null 2>&1
    podman volume rm -f "$run_id-cache" >/dev/null 2>&1
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# --- 1. tools ------------------------------------------------------------------------------
step packages "podman runc zstd mmdebstrap curl python3"
need=()
for p in podman runc zstd mmdebstrap curl python3; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if ((${#need[@]})); then
  echo "installing Debian packages: ${need[*]}"
  apt-get update -qq </dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
    </dev/null >"$work/apt.log" 2>&1 || { cat "$work/apt.log" >&2; fail "apt-get install ${need[*]}"; }
fi
# Quirks of these machines: no CAP_SYS_RESOURCE, so podman's default rlimits (nofile 1048576)
# are refused: use the hard limits we have. A v1/v2 hybrid cgroup layout with a controller on the
# v2 side: crun refuses it, runc copes. Only this script's podman calls see this file.
cat >"$work/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF=$work/containers.conf

# --- 2. base image: the Dockerfile's FROM, stood in for by a Debian rootfs ------------------
# python:3.X-slim-SUITE -> Debian SUITE with its python3 (which must be 3.X).
from=$(awk 'toupper($1) == "FROM" { print $2; exit }' "$dockerfile")
[[ $from =~ ^python:(3\.[0-9]+)-slim-([a-z]+)$ ]] || fail "FROM $from: expected python:3.X-slim-SUITE"
py_version=${BASH_REMATCH[1]}
suite=${BASH_REMATCH[2]}
base=docker.io/library/$from # what the short name resolves to
packages=python3,python3-venv,python-is-python3,passwd,ca-certificates
mmdebstrap_args=(--variant=minbase "--include=$packages"
  --aptopt='Acquire::Check-Valid-Until "false"' --aptopt='Acquire::Check-Date "false"'
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright')
# The cache key covers everything that shapes the rootfs: a change rebuilds it.
key=$(printf '%s\n' "$suite" "${mmdebstrap_args[@]}" | sha256sum | cut -c1-12)
rootfs=$cache_dir/rootfs-$suite-$key.tar.zst

step base-image "$from, rootfs $rootfs"
if [ "$(podman image inspect --format '{{index .Labels "wasm-agent.ci.rootfs"}}' "$base" 2>/dev/null || true)" != "$key" ]; then
  if [ ! -f "$rootfs" ] || ! zstd -q -t "$rootfs" 2>/dev/null; then
    step rootfs "not cached: mmdebstrap $suite"
    mirror=/etc/apt/sources.list.d/debian.sources # the host's mirror (and snapshot pin)
    [ -f "$mirror" ] || mirror=http://deb.debian.org/debian
    mkdir -p "$cache_dir"
    mmdebstrap --quiet "${mmdebstrap_args[@]}" "$suite" "$work/rootfs.tar" "$mirror" </dev/null \
      || fail "mmdebstrap $suite from $mirror"
    # Written under a temporary name, renamed when complete: an interrupted run leaves no
    # truncated cache behind.
    zstd -q -T0 -9 "$work/rootfs.tar" -o "$rootfs.tmp-$$"
    mv "$rootfs.tmp-$$" "$rootfs"
    rm -f "$work/rootfs.tar"
  else
    echo "rootfs cached: $(du -h "$rootfs" | cut -f1)"
  fi
  step import "$base"
  zstd -dc "$rootfs" | podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
    --change "LABEL wasm-agent.ci.rootfs=$key" - "$base" >/dev/null
else
  echo "base image already imported (rootfs $key)"
fi
got=$(podman run --rm --network none "$base" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$got" = "$py_version" ] || fail "Debian $suite has Python $got, the Dockerfile names $py_version"

# --- 3. build --------------------------------------------------------------------------------
step build "$image"
old_id=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
# The host's CA bundle is bind-mounted into RUN steps (TLS to the package index goes through a
# proxy whose CA only the host trusts); a mount is never part of a layer (checked below).
ca=/etc/ssl/certs/ca-certificates.crt
mounts=()
[ -f "$ca" ] && mounts=(-v "$ca:$ca:ro")
# --layers=false: no intermediate images are kept, so repeated CI runs do not pile up ~100 MB
# per source change; the layer cache would only save the venv creation (the package and its
# dependencies are one layer, redone whenever wasm_agent/ changes).
podman build --pull=never --layers=false -f "$dockerfile" -t "$image" "${mounts[@]}" "$repo" \
  </dev/null >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log" >&2; fail "podman build"; }
new_id=$(podman image inspect --format '{{.Id}}' "$image")
# The previous build of this tag, now untagged: removed (only that one image).
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then podman rmi "$old_id" >/dev/null 2>&1 || true; fi
size=$(podman image inspect --format '{{.Size}}' "$image")
base_size=$(podman image inspect --format '{{.Size}}' "$base")
echo "image $image: $((size / 1000000)) MB ($(((size - base_size) / 1000000)) MB over the base)"

# Every run below: read-only root filesystem, UID 65532, a fresh tmpfs on /tmp.
tmpfs=/tmp:rw,nosuid,nodev
run=(podman run --rm --read-only --read-only-tmpfs=false --tmpfs "$tmpfs" --user "$uid")

# --- 4. the image as built -------------------------------------------------------------------
step inspect "user, read-only root, PATH, nothing left from the build"
[ "$(podman image inspect --format '{{.Config.User}}' "$image")" = "$uid:$uid" ] || fail "image USER is not $uid:$uid"
# shellcheck disable=SC2016 # expanded by the container's shell
"${run[@]}" --network none --entrypoint sh "$image" -c '
  no() { echo "$1" >&2; exit 1; }
  [ "$(id -u):$(id -g)" = 65532:65532 ] || no "not running as 65532:65532"
  if touch /opt/wasm-agent/x 2>/dev/null; then no "root filesystem writable"; fi
  if [ -w /opt/wasm-agent/venv/bin/wasm-agent ]; then no "code writable by its user"; fi
  [ "$(command -v wasm-agent)" = /opt/wasm-agent/venv/bin/wasm-agent ] || no "wasm-agent not from the venv"
  case ":$PATH:" in *:/opt/wasm-agent/bin:*) ;; *) no "/opt/wasm-agent/bin not on PATH" ;; esac
  [ -d /opt/wasm-agent/bin ] || no "no /opt/wasm-agent/bin"
  if [ -e /src ] || command -v pip >/dev/null; then no "sources or pip left in the image"; fi
  touch /tmp/ok || no "/tmp not writable"
  [ -w /var/lib/wasm-agent ] || no "cache directory not writable"' || fail "the image's user, filesystem or PATH (above)"
# A credential helper mounted on /opt/wasm-agent/bin (as a volume would) is found on PATH, and a
# file there named wasm-agent does not shadow the real one.
mkdir -m 0755 "$work/helpers"
printf '#!/bin/sh\necho helper-found\n' >"$work/helpers/docker-credential-ci"
printf '#!/bin/sh\nexit 99\n' >"$work/helpers/wasm-agent"
chmod 0755 "$work/helpers"/*
# shellcheck disable=SC2016 # expanded by the container's shell
found=$("${run[@]}" --network none -v "$work/helpers:/opt/wasm-agent/bin:ro" --entrypoint sh "$image" \
  -c 'docker-credential-ci && command -v wasm-agent') || fail "credential helper on /opt/wasm-agent/bin"
[ "$found" = $'helper-found\n/opt/wasm-agent/venv/bin/wasm-agent' ] || fail "helper directory: got '$found'"
# The CA bundle mounted at build time did not end up in the image.
ca_sum() { podman run --rm --network none --entrypoint sha256sum "$1" "$ca" | cut -d' ' -f1; }
[ "$(ca_sum "$image")" = "$(ca_sum "$base")" ] || fail "$ca in the image differs from the base's: a build mount leaked"

step help "wasm-agent --help"
s=$SECONDS
"${run[@]}" --network none "$image" --help >"$work/help.txt" || fail "wasm-agent --help exited non-zero"
for cmd in proxy prefetch check run cache; do
  grep -qw "$cmd" "$work/help.txt" || fail "--help does not list '$cmd'"
done
"${run[@]}" --network none "$image" prefetch --help >/dev/null || fail "prefetch --help"
echo "--help ok ($((SECONDS - s))s)"

# --- 5. prefetch from a module server on the host into a volume ------------------------------
step prefetch "from a module server on 127.0.0.1 into a volume"
# A tiny valid module, unique to this run (a custom section names the run), served on loopback.
mkdir "$work/www"
sha=$(python3 - "$work/www/ci.wasm" "$run_id-$(date +%s%N)" <<'PY'
import hashlib, sys
name, payload = b"wasm-agent-ci", sys.argv[2].encode()
body = bytes([len(name)]) + name + payload
assert len(body) < 128  # one-byte LEB128 section size
data = b"\0asm\1\0\0\0" + bytes([0, len(body)]) + body
open(sys.argv[1], "wb").write(data)
print(hashlib.sha256(data).hexdigest())
PY
)
python3 - "$work/www" "$work/port" <<'PY' &
import functools, http.server, os, sys
class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass
handler = functools.partial(Handler, directory=sys.argv[1])
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
with open(sys.argv[2] + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
server.serve_forever()
PY
server_pid=$!
for _ in $(seq 100); do [ -f "$work/port" ] && break; sleep 0.05; done
[ -f "$work/port" ] || fail "module server did not start"
url=http://127.0.0.1:$(cat "$work/port")/ci.wasm
volume=$run_id-cache
podman volume create "$volume" >/dev/null
# --network host: the container reaches the server on the host's loopback (nothing else listens).
"${run[@]}" --network host -v "$volume:/var/lib/wasm-agent" "$image" \
  prefetch --sha256 "$sha" --json "$url" >"$work/prefetch.json" 2>"$work/prefetch.log" \
  || { cat "$work/prefetch.log" >&2; fail "prefetch $url exited non-zero"; }
mountpoint=$(podman volume inspect --format '{{.Mountpoint}}' "$volume")
module=$mountpoint/cache/modules/$sha.wasm
[ -f "$module" ] || fail "$sha.wasm not in the cache volume"
[ "$(sha256sum <"$module" | cut -d' ' -f1)" = "$sha" ] || fail "cached module's sha256 differs"
[ "$(stat -c %u "$module")" = "$uid" ] || fail "cached module not owned by $uid"
# The server stops: a second prefetch is served by the volume alone.
kill "$server_pid"
wait "$server_pid" 2>/dev/null || true
server_pid=""
"${run[@]}" --network none -v "$volume:/var/lib/wasm-agent" "$image" \
  prefetch --sha256 "$sha" --json "$url" >"$work/prefetch2.json" 2>"$work/prefetch2.log" \
  || { cat "$work/prefetch2.log" >&2; fail "second prefetch (server stopped) exited non-zero"; }
grep -q '"cached": true' "$work/prefetch2.json" || fail "second prefetch did not come from the cache"
echo "prefetch ok: $url -> volume $volume: cache/modules/$sha.wasm; again with the server stopped: cached"

# --- 6. proxy: status port published on the host's loopback, SIGTERM -------------------------
step proxy "status port published on 127.0.0.1, SIGTERM"
name=$run_id-proxy
podman run -d --name "$name" --read-only --read-only-tmpfs=false --tmpfs "$tmpfs" \
  --user "$uid" -v "$volume:/var/lib/wasm-agent" -p 127.0.0.1::15020 "$image" \
  proxy --plaintext --discovery-address 127.0.0.1:1 --listen unix:/tmp/XDS \
  --status-address 0.0.0.0:15020 >/dev/null
port=$(podman port "$name" 15020/tcp | sed 's/.*://')
ready=000
for _ in $(seq 100); do
  ready=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/healthz/ready" || true)
  [ "$ready" != 000 ] && break
  sleep 0.1
done
metrics=$(curl -s -w '\n%{http_code}' "http://127.0.0.1:$port/metrics" || true)
s=$SECONDS
podman stop -t 10 "$name" >/dev/null
stop_s=$((SECONDS - s))
rc=$(podman inspect "$name" --format '{{.State.ExitCode}}')
echo "proxy: /healthz/ready=$ready (503: no istiod) /metrics=${metrics##*$'\n'} exit on SIGTERM=$rc after ${stop_s}s"
[ "$ready" = 503 ] || { podman logs "$name" >&2; fail "/healthz/ready answered $ready, expected 503"; }
[ "${metrics##*$'\n'}" = 200 ] || fail "/metrics answered ${metrics##*$'\n'}"
grep -q '^# TYPE ' <<<"$metrics" || fail "/metrics is not in the Prometheus text format"
[ "$rc" = 0 ] || { podman logs "$name" >&2; fail "proxy exited $rc on SIGTERM, expected 0"; }
((stop_s < 10)) || fail "proxy took ${stop_s}s to stop (killed after the grace period?)"

step finished
echo "timings: ${timings[*]}; total $((SECONDS - t0))s"
echo "image $image: $size bytes"
