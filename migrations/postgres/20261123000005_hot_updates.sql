-- Room on each page for HOT updates: a step that keeps its lease changes no indexed column
-- (run_at, lease_owner, status and type stay), so with free space on the page PostgreSQL
-- updates the row without touching any of the table's indexes. Applies to pages written from
-- now on.
alter table kodomasu.workflows set (fillfactor = 70);
