#!/bin/sh
# Create the temporal and temporal_visibility databases and bring both schemas to this server release's version:
# the same commands as docker-compose.yaml's temporal-schema job. Idempotent (create tolerates an existing database,
# setup-schema -v 0.0 an existing schema, update-schema applies only newer migrations), so it runs before every
# server start and migrates on an upgrade. Reads SQL_PLUGIN/SQL_HOST/SQL_PORT/SQL_USER/SQL_PASSWORD.
#
#   setup-schema.sh <temporal-sql-tool> <schema dir: …/schema/postgresql/v12>
set -eu
tool=$1
schema=$2
for db in "${DBNAME:-temporal}:temporal" "${VISIBILITY_DBNAME:-temporal_visibility}:visibility"; do
  name=${db%%:*}
  dir=${db##*:}
  "$tool" --db "$name" create 2>&1 | grep -v 'already exists' || true
  "$tool" --db "$name" setup-schema -v 0.0
  "$tool" --db "$name" update-schema -d "$schema/$dir/versioned"
done
echo "temporal schema is current"
