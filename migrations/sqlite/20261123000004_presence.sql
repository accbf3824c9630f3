-- Kept in step with the PostgreSQL schema; the embedded backend finds dead workers by lease expiry.
alter table workers add column watch_pid integer;
