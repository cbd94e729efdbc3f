#!/usr/bin/env bash
# Make a Docker engine and the sandbox image available; idempotent and fast when both exist.
#
# On a fresh machine (as root): installs docker.io and debootstrap when no engine answers, starts
# dockerd in the background, waits for it, then builds the sandbox image offline (cached tarball).
# Exits non-zero with a clear message when any step fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${TOOLGYM_SANDBOX_IMAGE:-toolgym-sandbox:bookworm}"
DOCKERD_LOG="${TOOLGYM_DOCKERD_LOG:-/var/log/toolgym-dockerd.log}"

die() { echo "docker-up: $*" >&2; exit 1; }
engine_ok() { docker info >/dev/null 2>&1; }
as_root() { [[ $(id -u) -eq 0 ]] || die "$1 needs root (run this script as root or start Docker yourself)"; }

install_packages() {
  as_root "installing $*"
  echo "docker-up: installing $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null || die "apt-get update failed"
  apt-get install -y -q "$@" >/dev/null || die "apt-get install $* failed"
}

# gVisor's runsc as a Docker runtime (sandbox.runtime=runsc). These machines have no KVM and this runsc
# release has no systrap, so it runs on the ptrace platform; gVisor's netstack cannot start in a
# network-less container, hence --network=none, and --host-uds=create lets the executor create its
# socket in the bind-mounted run directory the host connects to.
RUNSC_ARGS='["--platform=ptrace", "--network=none", "--host-uds=create"]'
register_runsc() {
  python3 - "$RUNSC_ARGS" <<'PY'
import json, os, sys
path = "/etc/docker/daemon.json"
conf = json.load(open(path)) if os.path.exists(path) and os.path.getsize(path) else {}
want = {"path": "/usr/bin/runsc", "runtimeArgs": json.loads(sys.argv[1])}
runtimes = conf.setdefault("runtimes", {})
if runtimes.get("runsc") != want:
    runtimes["runsc"] = want
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(conf, f, indent=2)
    os.replace(path + ".tmp", path)
    print("changed")
PY
}
runsc_ok() { docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runsc"'; }
if [[ $(id -u) -eq 0 ]]; then
  command -v runsc >/dev/null || install_packages runsc
  register_runsc >/dev/null
fi

if ! engine_ok; then
  need=()
  command -v dockerd >/dev/null || need+=(docker.io)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  [[ ${#need[@]} -eq 0 ]] || install_packages "${need[@]}"
  command -v docker >/dev/null || die "docker client missing after install"
  if ! pgrep -x dockerd >/dev/null; then
    as_root "starting dockerd"
    echo "docker-up: starting dockerd (log: $DOCKERD_LOG)"
    mkdir -p "$(dirname "$DOCKERD_LOG")"
    nohup dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
  fi
  for _ in $(seq 1 60); do
    engine_ok && break
    sleep 1
  done
  engine_ok || { tail -20 "$DOCKERD_LOG" >&2 2>/dev/null || true; die "Docker engine did not answer within 60 s"; }
fi
# The local backend runs its executor under bubblewrap (its tests run in CI too).
if ! command -v bwrap >/dev/null; then
  if [[ $(id -u) -eq 0 ]]; then install_packages bubblewrap; else echo "docker-up: bubblewrap missing (apt-get install bubblewrap)" >&2; fi
fi
if [[ $(id -u) -eq 0 ]] && ! runsc_ok; then  # an engine started before runsc was registered: reload its config
  pkill -HUP -x dockerd || true
  for _ in $(seq 1 10); do runsc_ok && break; sleep 1; done
fi
runsc_ok || echo "docker-up: the gVisor runtime (runsc) is not registered; sandbox.runtime=runsc will be refused" >&2
echo "docker-up: engine $(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?') answers"

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || install_packages debootstrap
fi
TOOLGYM_SANDBOX_IMAGE="$IMAGE" bash "$ROOT/sandboxes/image/build.sh" || die "sandbox image build failed"
echo "docker-up: ready (image $IMAGE)"
