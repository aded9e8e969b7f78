-- Autovacuum and fillfactor for Flask-AmoCRM's busiest tables on PostgreSQL.
-- Run it once, after 'flask amocrm upgrade-db' (psql -f deploy/postgresql-tuning.sql);
-- it is safe to run again. See docs/deployment.md, "PostgreSQL".

-- The outbox: each event is inserted, updated on every attempt (status, attempts,
-- next_attempt_at, locked_until, remote, updated_at) and deleted by retention.
-- Vacuum it after 2 % of its rows changed instead of 20 %, so the dead rows do not
-- slow the claim of due events; leave room in each page for updates in place.
ALTER TABLE amocrm_events SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 500,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_analyze_threshold = 500,
    fillfactor = 80
);
-- One row per attempt, deleted with its event.
ALTER TABLE amocrm_event_attempts SET (
    autovacuum_vacuum_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05
);
-- One row per request to amoCRM, deleted after AMOCRM_RETENTION_DAYS.
ALTER TABLE amocrm_api_log SET (
    autovacuum_vacuum_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05
);
-- Changes from amoCRM: the same life as the outbox, the other way.
ALTER TABLE amocrm_inbound SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 500,
    fillfactor = 80
);
-- Small tables written all the time where there is no Redis (shared flags and
-- counters): vacuum them after a fixed number of changes.
ALTER TABLE amocrm_flags SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 200
);
ALTER TABLE amocrm_counters SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 200
);
