-- docker-compose.yml: POSTGRES_DB creates the gateway's database; the metrics
-- service owns a database of its own (services share no tables).
-- The postgres image runs this once, on an empty data volume.
CREATE DATABASE metrics;
