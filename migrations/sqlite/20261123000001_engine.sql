-- The engine's journal on SQLite: the same tables and meaning as migrations/postgres.
--
-- Storage conventions (the file is the database, so there is no schema prefix):
-- - ids are 16-byte UUID blobs (byte order = UUIDv7 time order, as in PostgreSQL);
-- - timestamps are UTC text of fixed width, 'YYYY-MM-DDTHH:MM:SS.ffffffZ', so text order is time
--   order; the database clock is `strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'`
--   (millisecond resolution);
-- - JSON values are text; booleans are 0 or 1.

-- One snapshot row per workflow: the fold of its event log plus the lease that fences writers.
create table workflows (
    id                  blob    primary key,
    workflow_type       text    not null,
    key                 text,
    status              text    not null,
    input               text    not null,
    state               text    not null,
    pending             text    not null,
    output              text,
    error               text,
    version             integer not null,
    next_call_seq       integer not null default 1,
    cancel_requested    integer not null default 0 check (cancel_requested in (0, 1)),
    -- When a worker should next look at this workflow; null while it waits for a signal or is finished.
    run_at              text,
    lease_owner         blob,
    lease_epoch         integer not null default 0,
    lease_expires_at    text,
    heartbeat_details   text,
    heartbeat_at        text,
    -- Signal inbox bookkeeping: seq of the newest signal, newest seq a worker has read, unconsumed count.
    signal_seq          integer not null default 0,
    signal_seen         integer not null default 0,
    signals_unconsumed  integer not null default 0,
    created_at          text    not null,
    updated_at          text    not null,
    finished_at         text,
    constraint workflows_type_key unique (workflow_type, key)
) strict;

create index workflows_due on workflows (run_at) where run_at is not null;
create index workflows_lease_owner on workflows (lease_owner) where lease_owner is not null;
create index workflows_status on workflows (status, id);
create index workflows_type on workflows (workflow_type, id);

-- Append-only event log; (workflow_id, seq) is gapless from 1 and seq = the version it produced.
create table events (
    workflow_id blob    not null references workflows (id) on delete cascade,
    seq         integer not null,
    kind        text    not null,
    payload     text    not null,
    created_at  text    not null,
    primary key (workflow_id, seq)
) strict;

-- The durable signal inbox; seq orders signals per workflow. The implicit rowid grows with every
-- insert (rows are never deleted but with their workflow), so listeners in other processes find
-- new signals by polling `rowid > last seen`.
create table signals (
    workflow_id  blob    not null references workflows (id) on delete cascade,
    seq          integer not null,
    name         text    not null,
    payload      text    not null,
    created_at   text    not null,
    consumed_at  text,
    -- The event seq at which the signal was applied or discarded.
    consumed_in  integer,
    primary key (workflow_id, seq)
) strict;

create index signals_unconsumed on signals (workflow_id, seq) where consumed_at is null;

-- Every activity attempt with its outcome, duration and the worker that ran it.
create table activity_attempts (
    workflow_id   blob    not null references workflows (id) on delete cascade,
    call_seq      integer not null,
    attempt       integer not null,
    activity_name text    not null,
    worker_id     blob,
    outcome       text    not null,
    error         text,
    started_at    text,
    finished_at   text    not null,
    duration_ms   integer,
    primary key (workflow_id, call_seq, attempt)
) strict;

-- The worker registry; a worker is alive while its heartbeat is younger than its lease TTL.
create table workers (
    id            blob    primary key,
    host          text    not null,
    pid           integer not null,
    slots         integer not null,
    slots_used    integer not null default 0,
    lease_ttl_ms  integer not null,
    started_at    text    not null,
    heartbeat_at  text    not null,
    stopped_at    text
) strict;
