#!/usr/bin/env bash
# Installs PostgreSQL from Debian packages, starts a cluster on 127.0.0.1:5432, creates the role and database the
# custody-store test suite uses, and prints the line that points the suite at it:
#
#     eval "$(bash .ci/postgres.sh)"      # sets CUSTODY_TEST_POSTGRES_URL
#
# Idempotent: an installed package, a running cluster, an existing role or database are kept. Everything but the
# export line goes to stderr. Needs root (apt-get, and runuser to act as the postgres user).
set -euo pipefail

role=custody
password=custody          # loopback-only test cluster; the suite creates and drops its own schemas
database=custody_test
port=5432

log() { printf 'postgres.sh: %s\n' "$*" >&2; }

if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    log "installing postgresql (apt-get)"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2
fi

version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$version main"; then
    log "creating cluster $version/main"
    pg_createcluster "$version" main --port "$port" >&2
fi
if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $4}' | grep -qx online; then
    log "starting cluster $version/main"
    pg_ctlcluster "$version" main start >&2
fi
cluster_port=$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $3}')

psql_admin() { runuser -u postgres -- psql --port "$cluster_port" -v ON_ERROR_STOP=1 -qtA "$@"; }

if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$role'")" != 1 ]; then
    log "creating role $role"
    psql_admin -c "CREATE ROLE $role LOGIN PASSWORD '$password'" >&2
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$database'")" != 1 ]; then
    log "creating database $database"
    psql_admin -c "CREATE DATABASE $database OWNER $role" >&2
fi

log "PostgreSQL $version ready on 127.0.0.1:$cluster_port"
echo "export CUSTODY_TEST_POSTGRES_URL=postgres://$role:$password@127.0.0.1:$cluster_port/$database"
