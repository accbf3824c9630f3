-- Events and attempt rows are only ever written by the statements that also write (and fence
-- on) their workflow's row, and workflows are never deleted, so the foreign keys checked
-- nothing that could go wrong, at three trigger calls per step commit (about 8% of a step
-- commit's cost; docs/benchmarks.md). The signal inbox keeps its key: `send_signal` is the one
-- writer that does not go through a fenced commit.
alter table kodomasu.events drop constraint events_workflow_id_fkey;
alter table kodomasu.activity_attempts drop constraint activity_attempts_workflow_id_fkey;
