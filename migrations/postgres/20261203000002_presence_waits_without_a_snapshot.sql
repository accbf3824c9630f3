-- The presence watcher's long waits (docs/benchmarks.md, change 11). A statement that blocks
-- holds its snapshot for as long as it blocks, and while it does PostgreSQL may remove no row
-- version of this database that died after the snapshot was taken: pruning stops, index
-- entries of finished workflows can no longer be marked dead, and every claim walks all of
-- them (26 000 buffers a claim after 12 000 workflows). These procedures wait in slices of at
-- most a second and commit between them, so the watcher's snapshot is never older than that.
-- The client sends one CALL either way; a joining worker's cancel interrupts it as before.

-- Takes the session advisory lock `key`, waiting up to `wait_s` seconds; then fails with
-- lock_not_available (55P03), as a lock wait under `lock_timeout` does.
create or replace procedure kodomasu.await_advisory_lock(key bigint, wait_s double precision)
language plpgsql as $$
declare
    deadline timestamptz := clock_timestamp() + make_interval(secs => wait_s);
begin
    loop
        begin
            perform set_config('lock_timeout', '1000', true);
            perform pg_advisory_lock(key);
            return;
        exception when lock_not_available then
            null;
        end;
        commit;
        if clock_timestamp() >= deadline then
            raise exception 'advisory lock % not granted within % s', key, wait_s
                using errcode = 'lock_not_available';
        end if;
    end loop;
end $$;

-- Sleeps `wait_s` seconds.
create or replace procedure kodomasu.sleep_in_slices(wait_s double precision)
language plpgsql as $$
declare
    deadline timestamptz := clock_timestamp() + make_interval(secs => wait_s);
begin
    while clock_timestamp() < deadline loop
        perform pg_sleep(least(1.0, extract(epoch from deadline - clock_timestamp())));
        commit;
    end loop;
end $$;
