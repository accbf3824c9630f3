-- PostgreSQL-only storage tuning (fillfactor); nothing to do on SQLite. Kept so both backends
-- carry the same migration versions.
select 1;
