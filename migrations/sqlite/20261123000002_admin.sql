-- Admin API and live events; the same meaning as migrations/postgres.

-- An optional label a workflow type gives each workflow at start, for filtering lists.
alter table workflows add column tag text;
create index workflows_tag on workflows (tag, id) where tag is not null;

-- A global, increasing id of every event: the position of the live event feed. SQLite has one
-- writer at a time, so ids become visible in order; AUTOINCREMENT never reuses one. The table is
-- rebuilt because a column with AUTOINCREMENT must be the primary key; (workflow_id, seq) stays
-- unique. Nothing references `events`.
create table events_new (
    gid         integer primary key autoincrement,
    workflow_id blob    not null references workflows (id) on delete cascade,
    seq         integer not null,
    kind        text    not null,
    payload     text    not null,
    created_at  text    not null,
    unique (workflow_id, seq)
) strict;

insert into events_new (workflow_id, seq, kind, payload, created_at)
select workflow_id, seq, kind, payload, created_at from events order by rowid;

drop table events;
alter table events_new rename to events;
