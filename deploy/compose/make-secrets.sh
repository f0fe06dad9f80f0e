#!/usr/bin/env sh
# Create the secrets compose.yaml reads, if they are not there yet: Nakama's session key
# (shared by Nakama and the edges), its refresh key, its console's password and signing key,
# and the database password. Random. The directory is yours
# alone; the files in it are readable by every user inside the containers they are mounted
# into (as a Swarm secret is, 0444), because the edge runs as a user of its own.
set -eu
cd "$(dirname "$0")"
umask 077
mkdir -p secrets
chmod 700 secrets
for name in session_key refresh_key console_password console_signing_key db_password; do
  if [ ! -s "secrets/$name" ]; then
    od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"secrets/$name"
    chmod 444 "secrets/$name"
    echo "wrote secrets/$name"
  fi
done
