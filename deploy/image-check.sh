#!/usr/bin/env bash
# Proves the Dockerfile builds and the broker inside the image serves, on a
# machine with no container engine (only `podman build --isolation=chroot`
# works here, `podman run` does not):
#
#   1. a Debian bookworm root with python3 is made by debootstrap (cached) and
#      imported as the local base image;
#   2. the Dockerfile is built on it with podman;
#   3. the image's filesystem is exported and the broker started inside it with
#      chroot, as the image's user, with the image's environment and working
#      directory, against the real PostgreSQL: `migrate`, then `serve`, until
#      /readyz answers 200; the image's HEALTHCHECK command is run too.
#
# Needs root (apt-get, debootstrap, chroot). Everything it starts or creates is
# removed on exit, success or not. Settings (environment):
#   IMAGE_CHECK_ADMIN_URL  PostgreSQL URL of a database to CREATE DATABASE from
#                          (default postgresql://postgres@127.0.0.1:5432/postgres)
#   IMAGE_CHECK_CACHE      where the base root is cached (default /var/cache/broker-image-check)
set -euo pipefail
cd "$(dirname "$0")/.."

ADMIN_URL=${IMAGE_CHECK_ADMIN_URL:-postgresql://postgres@127.0.0.1:5432/postgres}
CACHE=${IMAGE_CHECK_CACHE:-/var/cache/broker-image-check}
SUITE=bookworm
BASE_TAG=localhost/broker-base:$SUITE
IMAGE_TAG=localhost/workfront-broker:check
# Bounds, in seconds, so a hung mirror or server fails the check instead of CI.
BOOTSTRAP_TIMEOUT=1200
BUILD_TIMEOUT=1200
READY_TIMEOUT=60

# For messages: the admin URL without its password, if it has one.
ADMIN_URL_SHOWN=$(sed -E 's#://([^:@/]+):[^@/]*@#://\1:***@#' <<<"$ADMIN_URL")
started=$SECONDS
say() { echo "image-check: $*"; }
die() {
    echo "image-check: FAILED: $*" >&2
    exit 1
}

[[ $(id -u) == 0 ]] || die "must run as root (apt-get, debootstrap, chroot)"

# -- tools ---------------------------------------------------------------------
missing=()
for tool in podman debootstrap psql curl; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    packages=()
    for tool in "${missing[@]}"; do
        case $tool in
        psql) packages+=(postgresql-client) ;;
        *) packages+=("$tool") ;;
        esac
    done
    say "installing ${packages[*]}"
    apt_log=$(mktemp /tmp/image-check-apt.XXXXXX)
    if ! { apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 \
            apt-get install -y -qq "${packages[@]}"; } >"$apt_log" 2>&1; then
        tail -n 20 "$apt_log" >&2
        die "apt-get install ${packages[*]} failed (log: $apt_log)"
    fi
    rm -f "$apt_log"
fi

# -- base image: a minimal Debian root with python3 ----------------------------
# The mirror the machine's own apt uses (deb822 sources first, then one-line).
mirror() {
    local uri
    uri=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)
    if [[ -z $uri ]]; then
        uri=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

mkdir -p "$CACHE"
rootfs_tar=$CACHE/$SUITE-python3.tar
if [[ ! -s $rootfs_tar ]]; then
    url=$(mirror)
    curl -fsS -o /dev/null --max-time 30 "$url/dists/$SUITE/Release" ||
        die "Debian mirror $url is not reachable"
    say "debootstrapping a minimal $SUITE root from $url (once; cached in $CACHE)"
    work=$(mktemp -d "$CACHE/debootstrap.XXXXXX")
    # python3-venv brings ensurepip, which both Dockerfile stages use for pip.
    if ! timeout "$BOOTSTRAP_TIMEOUT" debootstrap --variant=minbase \
        --include=python3,python3-venv "$SUITE" "$work/root" "$url" \
        >"$CACHE/debootstrap.log" 2>&1; then
        rm -rf "$work"
        die "debootstrap failed; see $CACHE/debootstrap.log"
    fi
    rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
    tar -C "$work/root" --numeric-owner -cf "$rootfs_tar.partial" .
    mv "$rootfs_tar.partial" "$rootfs_tar"
    rm -rf "$work"
    podman image rm --force "$BASE_TAG" >/dev/null 2>&1 || true
fi
if ! podman image exists "$BASE_TAG"; then
    say "importing $rootfs_tar as $BASE_TAG"
    podman import --quiet "$rootfs_tar" "$BASE_TAG" >/dev/null || die "podman import failed"
fi

# -- build ---------------------------------------------------------------------
# Docker format keeps the HEALTHCHECK (the OCI image format has no such field).
# pip inside the build reaches PyPI through the host's network (chroot
# isolation), so it must trust what the host trusts: where outbound TLS is
# re-signed by a local CA (as on these machines), only the system bundle holds
# it, so that bundle is mounted into the build and named by PIP_CERT.
build_args=(--build-arg "BASE_IMAGE=$BASE_TAG")
host_ca=${IMAGE_CHECK_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
if [[ -s $host_ca ]]; then
    build_args+=(--volume "$host_ca:/run/host-ca.pem:ro" --build-arg PIP_CERT=/run/host-ca.pem)
fi
# Earlier builds' layers are this build's cache; drop only old ones, so
# repeated runs on one machine stay fast without the store growing forever.
podman image prune --force --filter until=72h >/dev/null 2>&1 || true
say "building $IMAGE_TAG on $BASE_TAG"
build_log=$(mktemp /tmp/image-check-build.XXXXXX)
if ! timeout "$BUILD_TIMEOUT" podman build --isolation=chroot --format=docker --pull=never \
    "${build_args[@]}" -t "$IMAGE_TAG" . >"$build_log" 2>&1; then
    tail -n 40 "$build_log" >&2
    die "podman build failed (full log: $build_log)"
fi
rm -f "$build_log"

inspect() { podman image inspect --format "$1" "$IMAGE_TAG"; }
size_bytes=$(inspect '{{.Size}}')
user=$(inspect '{{.Config.User}}')
workdir=$(inspect '{{.Config.WorkingDir}}')
healthcheck=$(inspect '{{if .Config.Healthcheck}}{{json .Config.Healthcheck.Test}}{{end}}')
mapfile -t image_env < <(inspect '{{range .Config.Env}}{{println .}}{{end}}' | sed '/^$/d')
[[ -n $user && $user != root && $user != 0 && $user != 0:* ]] ||
    die "the image runs as root (USER is '${user:-unset}')"
[[ -n $healthcheck ]] || die "the image has no HEALTHCHECK"
[[ $user == *:* ]] || user=$user:$user

# -- run the image's filesystem with chroot ------------------------------------
run_dir=$(mktemp -d /tmp/image-check-run.XXXXXX)
container=""
server_pid=""
database="image_check_$$_$RANDOM"
database_created=""
cleanup() {
    local status=$?
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    if [[ -n $database_created ]]; then
        psql "$ADMIN_URL" -qX -v ON_ERROR_STOP=1 \
            -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 ||
            echo "image-check: could not drop database $database" >&2
    fi
    [[ -z $container ]] || podman rm --force "$container" >/dev/null 2>&1 || true
    rm -rf "$run_dir"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# mktemp made it 0700: as the image's root directory it must be 0755 for the
# unprivileged user to reach anything.
chmod 0755 "$run_dir"
# --no-healthcheck: podman would try to schedule the check with systemd.
container=$(podman create --no-healthcheck "$IMAGE_TAG")
podman export "$container" | tar -C "$run_dir" -xf - || die "exporting the image failed"
podman rm "$container" >/dev/null
container=""

# What the final stage must not carry: compilers, pip and its cache, the build
# stage's trees, the checkout's secrets and tests.
for leftover in usr/bin/gcc usr/bin/cc root/.cache/pip opt/venv/bin/pip wheels src \
    build-venv app/.env app/tests app/.git; do
    [[ ! -e $run_dir/$leftover ]] || die "the image holds /$leftover"
done

psql "$ADMIN_URL" -qX -v ON_ERROR_STOP=1 -c "CREATE DATABASE $database" >/dev/null ||
    die "cannot create a database through $ADMIN_URL_SHOWN"
database_created=1
database_url="${ADMIN_URL%/*}/$database"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
key=$(head -c 32 /dev/urandom | base64 | tr '+/' '-_')
# The broker reads only its environment (no .env in the image's /app): the
# image's ENV plus the configuration an operator would give. Workfront is never
# called for /readyz, so a placeholder instance will do.
broker_env=(
    "${image_env[@]}"
    "HOME=/nonexistent"
    "BROKER_DATABASE_URL=$database_url"
    "BROKER_WORKFRONT_URL=https://image-check.invalid"
    "BROKER_WORKFRONT_DOMAIN=image-check"
    "BROKER_WORKFRONT_LANE=my"
    "BROKER_CLIENT_ID=image-check"
    "BROKER_CLIENT_SECRET=image-check-secret"
    "BROKER_REDIRECT_URI=http://127.0.0.1:$port/oauth/callback"
    "BROKER_ENCRYPTION_KEYS=k1:$key"
)
# env -i: nothing of this shell's environment leaks in. Every program here
# execs the next, so a background start's $! is the broker's own pid.
in_image=(env -i "${broker_env[@]}" "$(command -v chroot)" --userspec="$user" "$run_dir"
    /usr/bin/env --chdir="$workdir")

say "migrating database $database inside the image"
"${in_image[@]}" python -m service migrate || die "'python -m service migrate' failed inside the image"

log=$run_dir/serve.log
"${in_image[@]}" python -m service serve --host 127.0.0.1 --port "$port" >"$log" 2>&1 &
server_pid=$!

ready_body=""
deadline=$((SECONDS + READY_TIMEOUT))
while ((SECONDS < deadline)); do
    kill -0 "$server_pid" 2>/dev/null || {
        cat "$log" >&2
        die "the broker exited before it was ready"
    }
    if ready_body=$(curl -fsS --max-time 2 "http://127.0.0.1:$port/readyz" 2>/dev/null); then
        break
    fi
    ready_body=""
    sleep 0.5
done
[[ -n $ready_body ]] || {
    cat "$log" >&2
    die "/readyz did not answer 200 within ${READY_TIMEOUT}s"
}

# The HEALTHCHECK's own command, run inside the image against this port.
mapfile -t probe < <(python3 -c 'import json, sys; t = json.loads(sys.argv[1]); print("\n".join(t))' "$healthcheck")
[[ ${probe[0]} == CMD ]] || die "HEALTHCHECK is not in exec form: $healthcheck"
probe=("${probe[@]:1}")
probe=("${probe[@]//:8000\//:$port/}")
"${in_image[@]}" "${probe[@]}" || die "the image's HEALTHCHECK command failed"

run_as=$(awk '/^Uid:/ {print $2}' "/proc/$server_pid/status")
uid=${user%%:*}
name=$(awk -F: -v uid="$uid" '$3 == uid {print $1}' "$run_dir/etc/passwd")

# Stop it as an orchestrator does: SIGTERM, then a bounded wait.
kill -TERM "$server_pid"
stop_status=0
for _ in $(seq 150); do
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.2
done
if kill -0 "$server_pid" 2>/dev/null; then
    die "the broker did not exit within 30s of SIGTERM"
fi
wait "$server_pid" || stop_status=$?
server_pid=""

say "image $IMAGE_TAG: $(awk -v b="$size_bytes" 'BEGIN {printf "%.1f MB", b / 1e6}') ($size_bytes bytes)"
say "no compiler, pip, pip cache or build tree in the image"
say "ran as user ${name:-?} ($user; process uid ${run_as:-?})"
say "GET /readyz -> 200 $ready_body"
say "HEALTHCHECK command passed; SIGTERM stopped the broker (exit status $stop_status)"
say "OK in $((SECONDS - started))s"
