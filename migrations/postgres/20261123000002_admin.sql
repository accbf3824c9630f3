-- Admin API and live events.

-- An optional label a workflow type gives each workflow at start (e.g. the group it belongs to),
-- for filtering lists; set once, never changed.
alter table kodomasu.workflows add column tag text;
create index workflows_tag on kodomasu.workflows (tag, id desc) where tag is not null;

-- A global, increasing id of every event: the position of the live event feed (SSE `id:`).
-- Ids come from a sequence, so a transaction can commit a smaller id after another committed a
-- larger one; readers of the feed handle that (engine/src/feed.rs). Every statement that inserts
-- events writes the workflow's row first, so its transaction has an xid before it draws an id.
alter table kodomasu.events add column gid bigint generated always as identity;
create unique index events_gid on kodomasu.events (gid);
