#!/usr/bin/env bash
# Start a throwaway PostgreSQL server for the test suite and print its SQLAlchemy URL
# (postgresql+psycopg://postgres@127.0.0.1:PORT/qwenproxy_test) as the only line on stdout.
#
#   .ci/start_postgres.sh [DIR]        start; DIR (default: a new temp dir) holds data,
#                                      socket and log; progress goes to stderr
#   .ci/start_postgres.sh --stop DIR   stop the server started in DIR and remove DIR
#
# Installs Debian's `postgresql` package when no initdb is found (needs root or sudo).
# As root, the server runs as the unprivileged `postgres` user. Loopback only, trust auth,
# fsync off: for tests, never for data.
set -euo pipefail

DB_NAME=qwenproxy_test
DB_USER=postgres

log() { echo "start_postgres: $*" >&2; }

find_bindir() {
    local candidate
    if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v pg_ctl)")"
        return 0
    fi
    for candidate in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$candidate/initdb" ] && [ -x "$candidate/pg_ctl" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        log "need root (or sudo) to run: $*"
        return 1
    fi
}

# Run a PostgreSQL program as the server's user: `postgres` when we are root.
as_server_user() {
    if [ "$(id -u)" -eq 0 ]; then
        if command -v runuser >/dev/null 2>&1; then
            runuser -u postgres -- "$@"
        else
            su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
        fi
    else
        "$@"
    fi
}

if [ "${1:-}" = "--stop" ]; then
    dir=${2:?usage: $0 --stop DIR}
    if bindir=$(find_bindir) && [ -f "$dir/data/postmaster.pid" ]; then
        as_server_user "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    exit 0
fi

if ! bindir=$(find_bindir); then
    log "installing the postgresql package (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    # We make our own cluster: skip the package's default one (and its service start).
    if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
        as_root mkdir -p /etc/postgresql-common
        echo "create_main_cluster = false" | as_root tee /etc/postgresql-common/createcluster.conf >/dev/null
    fi
    as_root apt-get update -qq >/dev/null
    as_root apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    bindir=$(find_bindir) || { log "initdb not found after installing postgresql"; exit 1; }
fi

dir=${1:-$(mktemp -d "${TMPDIR:-/tmp}/qwenproxy-pg.XXXXXX")}
mkdir -p "$dir"
if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$dir" --shell /bin/sh postgres
    chown postgres "$dir"
fi
chmod 700 "$dir"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

log "initdb in $dir/data ($("$bindir/initdb" --version))"
as_server_user "$bindir/initdb" -D "$dir/data" -U "$DB_USER" -A trust -E UTF8 --no-locale \
    >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
mkdir -p "$dir/socket"
if [ "$(id -u)" -eq 0 ]; then
    chown postgres "$dir/socket"
fi

log "starting on 127.0.0.1:$port"
as_server_user "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
    -o "-p $port -k $dir/socket -c listen_addresses=127.0.0.1 -c fsync=off \
        -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    >/dev/null || { cat "$dir/server.log" >&2; exit 1; }

as_server_user "$bindir/createdb" -h "$dir/socket" -p "$port" -U "$DB_USER" "$DB_NAME"
log "ready; stop with: $0 --stop $dir"
echo "postgresql+psycopg://$DB_USER@127.0.0.1:$port/$DB_NAME"
