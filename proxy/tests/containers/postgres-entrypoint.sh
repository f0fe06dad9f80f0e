#!/bin/sh
# The entrypoint of the test's PostgreSQL image (Debian's postgresql-15 in a bare root): the
# official postgres image's interface, as much of it as deploy/compose/compose.yaml uses.
# POSTGRES_PASSWORD_FILE (the superuser's password), POSTGRES_DB (created on first start),
# PGDATA (default /var/lib/postgresql/data). Runs as the postgres user.
set -eu
PGDATA=${PGDATA:-/var/lib/postgresql/data}
bin=/usr/lib/postgresql/15/bin
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  "$bin/initdb" -D "$PGDATA" -U postgres --pwfile="$POSTGRES_PASSWORD_FILE" \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  if [ -n "${POSTGRES_DB:-}" ] && [ "$POSTGRES_DB" != postgres ]; then
    echo "CREATE DATABASE \"$POSTGRES_DB\"" | "$bin/postgres" --single -D "$PGDATA" postgres >/dev/null
  fi
fi
exec "$bin/postgres" -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp
