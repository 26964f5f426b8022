#!/usr/bin/env bash
# Run once by the postgres image on an empty data volume (docker-entrypoint-initdb.d): a database and
# an owner for Airflow's metadata and another for the pipeline's ledger, each with its own password
# from .env, so that neither reader can open the other's tables.
set -euo pipefail

for reader in airflow ledger; do
  password_variable="${reader^^}_DB_PASSWORD"
  password="${!password_variable:?set ${password_variable} (see .env.example)}"
  psql --set ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
       --set reader="${reader}" --set password="${password}" <<'SQL'
CREATE ROLE :"reader" LOGIN PASSWORD :'password';
CREATE DATABASE :"reader" OWNER :"reader";
REVOKE ALL ON DATABASE :"reader" FROM PUBLIC;
SQL
done
