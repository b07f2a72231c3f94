-- Placeholder on branch nodes only: migration 0015 belongs to another branch (issue 18). The
-- migrator refuses gaps, so this branch carries an empty one; the integrator drops it.
SELECT 1;
