-- The runtime issue: who a tenant's jobs run as, whether a job may use the host's network,
-- and which image (layered root filesystem) it runs on. Names of the agent's choices are
-- checked here too, so psql stays as safe a client as the CLI.

-- A user name or a numeric uid[:gid] of the node; NULL means the node's default (nobody).
-- Root is refused: jobs never run with uid 0.
ALTER TABLE scheduler.tenants ADD COLUMN run_as text;
ALTER TABLE scheduler.tenants ADD CONSTRAINT tenant_run_as_format CHECK (
    run_as IS NULL OR (
        run_as ~ '^([a-z_][a-z0-9_-]{0,31}|[1-9][0-9]{0,9}(:[1-9][0-9]{0,9})?)$'
        AND run_as <> 'root'
    )
);

-- A job asks for the host's network; the node runs it only if its operator allows it.
ALTER TABLE scheduler.jobs ADD COLUMN network boolean NOT NULL DEFAULT false;

-- Image names become directory names under <state>/images: same rule as tenant names.
ALTER TABLE scheduler.jobs ADD COLUMN image text;
ALTER TABLE scheduler.jobs ADD CONSTRAINT job_image_name_format CHECK (
    image IS NULL OR image ~ '^[a-z0-9][a-z0-9_-]{0,62}$'
);
