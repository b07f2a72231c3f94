-- Nodes: each agent registers its node, renews a lease by heartbeat, and claims under an epoch.
-- A node whose lease expired (by a grace) is marked down by any other agent, and its running
-- jobs are requeued or lost; the epoch fences the old agent if it comes back.

CREATE TABLE scheduler.nodes (
    name             text PRIMARY KEY,
    -- Raised each time an agent takes the node: claims carry it (jobs.node_epoch).
    epoch            bigint NOT NULL DEFAULT 1,
    state            text NOT NULL DEFAULT 'up',
    lease_expires_at timestamptz NOT NULL,
    started_at       timestamptz NOT NULL DEFAULT now(),
    heartbeat_at     timestamptz NOT NULL DEFAULT now(),
    version          text NOT NULL,
    cgroup_driver    text NOT NULL,
    cpu              numeric NOT NULL,
    memory_bytes     bigint NOT NULL,
    -- Who holds the lease: the host's boot id and the agent's pid (NULL once it stopped).
    boot_id          text NOT NULL,
    pid              integer,
    CONSTRAINT node_state_valid CHECK (state IN ('up', 'down')),
    CONSTRAINT node_epoch_positive CHECK (epoch >= 1),
    CONSTRAINT node_capacity_positive CHECK (cpu > 0 AND memory_bytes > 0)
);

-- The epoch of the node's lease under which the job's current attempt was claimed.
ALTER TABLE scheduler.jobs ADD COLUMN node_epoch bigint;
