-- Dead-worker detection: the backend pid of each worker's watcher session (see
-- engine/src/store/pg_presence.rs), so a joining worker can interrupt its predecessor's wait.
alter table kodomasu.workers add column watch_pid integer;
