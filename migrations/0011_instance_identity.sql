-- The database's identity, made once: the agent writes it (with the database's oid, which a
-- copy, a dump restored into a new database or CREATE DATABASE ... TEMPLATE does not keep)
-- into every runtime record of an attempt (the monitor's reserved exit record, the exit
-- record), so that a state directory that outlives its database can never lend an old
-- attempt's exit to a new job that got the same id (docs/architecture.md, "Exit records").
CREATE TABLE scheduler.instance (
    -- One row only.
    singleton  boolean PRIMARY KEY DEFAULT true CONSTRAINT instance_one_row CHECK (singleton),
    id         uuid NOT NULL DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO scheduler.instance DEFAULT VALUES;
-- Agents read it; nobody else needs it (tenant roles get nothing on it).
REVOKE ALL ON scheduler.instance FROM PUBLIC;
