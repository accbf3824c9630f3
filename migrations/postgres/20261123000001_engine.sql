-- The engine's journal. Every table lives in its own schema so kodomasu can share a database.
create schema if not exists kodomasu;

-- One snapshot row per workflow: the fold of its event log plus the lease that fences writers.
create table kodomasu.workflows (
    id                  uuid primary key,
    workflow_type       text        not null,
    key                 text,
    status              text        not null,
    input               jsonb       not null,
    state               jsonb       not null,
    pending             jsonb       not null,
    output              jsonb,
    error               jsonb,
    version             bigint      not null,
    next_call_seq       bigint      not null default 1,
    cancel_requested    boolean     not null default false,
    -- When a worker should next look at this workflow; null while it waits for a signal or is finished.
    run_at              timestamptz,
    lease_owner         uuid,
    lease_epoch         bigint      not null default 0,
    lease_expires_at    timestamptz,
    heartbeat_details   jsonb,
    heartbeat_at        timestamptz,
    -- Signal inbox bookkeeping: seq of the newest signal, newest seq a worker has read, unconsumed count.
    signal_seq          bigint      not null default 0,
    signal_seen         bigint      not null default 0,
    signals_unconsumed  bigint      not null default 0,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    finished_at         timestamptz,
    constraint workflows_type_key unique (workflow_type, key)
);

create index workflows_due on kodomasu.workflows (run_at) where run_at is not null;
create index workflows_lease_owner on kodomasu.workflows (lease_owner) where lease_owner is not null;
create index workflows_status_created on kodomasu.workflows (status, created_at desc, id desc);
create index workflows_created on kodomasu.workflows (created_at desc, id desc);

-- Append-only event log; (workflow_id, seq) is gapless from 1 and seq = the version it produced.
create table kodomasu.events (
    workflow_id uuid        not null references kodomasu.workflows (id) on delete cascade,
    seq         bigint      not null,
    kind        text        not null,
    payload     jsonb       not null,
    created_at  timestamptz not null default now(),
    primary key (workflow_id, seq)
);

-- The durable signal inbox; seq orders signals per workflow.
create table kodomasu.signals (
    workflow_id  uuid        not null references kodomasu.workflows (id) on delete cascade,
    seq          bigint      not null,
    name         text        not null,
    payload      jsonb       not null,
    created_at   timestamptz not null default now(),
    consumed_at  timestamptz,
    -- The event seq at which the signal was applied or discarded.
    consumed_in  bigint,
    primary key (workflow_id, seq)
);

create index signals_unconsumed on kodomasu.signals (workflow_id, seq) where consumed_at is null;

-- Every activity attempt with its outcome, duration and the worker that ran it.
create table kodomasu.activity_attempts (
    workflow_id   uuid        not null references kodomasu.workflows (id) on delete cascade,
    call_seq      bigint      not null,
    attempt       integer     not null,
    activity_name text        not null,
    worker_id     uuid,
    outcome       text        not null,
    error         jsonb,
    started_at    timestamptz,
    finished_at   timestamptz not null default now(),
    duration_ms   bigint,
    primary key (workflow_id, call_seq, attempt)
);

-- The worker registry; a worker is alive while its heartbeat is younger than its lease TTL.
create table kodomasu.workers (
    id            uuid primary key,
    host          text        not null,
    pid           integer     not null,
    slots         integer     not null,
    slots_used    integer     not null default 0,
    lease_ttl_ms  bigint      not null,
    started_at    timestamptz not null default now(),
    heartbeat_at  timestamptz not null default now(),
    stopped_at    timestamptz
);
