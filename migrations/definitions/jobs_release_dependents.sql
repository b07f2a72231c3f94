-- Releasing or cancelling a job's dependents when it ends (the trigger of 0014). This file
-- is the function's one place (scheduler/db/migrate.py applies it after the numbered
-- migrations whenever its text changes); its first text is in 0014. Since 0020 a job that
-- nothing waits on costs one probe of jobs_depends_on_idx and nothing else.
CREATE OR REPLACE FUNCTION scheduler.jobs_release_dependents() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    writer text := current_setting('scheduler.writer', true);
    released integer;
BEGIN
    -- Almost every job that ends has no dependents: one probe of jobs_depends_on_idx (which
    -- holds only queued jobs with dependencies) and no writer switch or update.
    IF NOT EXISTS (SELECT 1 FROM scheduler.jobs j
                   WHERE j.state = 'queued' AND j.depends_on <> '{}'
                     AND j.depends_on @> ARRAY[NEW.id]) THEN
        RETURN NULL;
    END IF;
    PERFORM set_config('scheduler.writer', 'agent', true);
    IF NEW.state = 'succeeded' THEN
        UPDATE scheduler.jobs j SET deps_waiting = j.deps_waiting - 1
        WHERE j.state = 'queued' AND j.depends_on <> '{}' AND j.depends_on @> ARRAY[NEW.id];
        GET DIAGNOSTICS released = ROW_COUNT;
        IF released > 0 THEN
            PERFORM pg_notify('scheduler_jobs', 'queued');
        END IF;
    ELSE
        WITH RECURSIVE doomed (id, via, via_state) AS (
            SELECT j.id, NEW.id, NEW.state FROM scheduler.jobs j
            WHERE j.state = 'queued' AND j.depends_on <> '{}' AND j.depends_on @> ARRAY[NEW.id]
            UNION
            SELECT j.id, d.id, 'cancelled'::text FROM doomed d
            JOIN scheduler.jobs j
              ON j.state = 'queued' AND j.depends_on <> '{}' AND j.depends_on @> ARRAY[d.id]
        )
        UPDATE scheduler.jobs j
        SET state = 'cancelled', finished_at = clock_timestamp(),
            error = format('dependency %s %s', v.via, v.via_state)
        FROM (SELECT DISTINCT ON (d.id) d.id, d.via, d.via_state FROM doomed d
              ORDER BY d.id, d.via) v
        WHERE j.id = v.id AND j.state = 'queued';
    END IF;
    PERFORM set_config('scheduler.writer', COALESCE(writer, ''), true);
    RETURN NULL;
END;
$$;
