-- Placeholder so that this branch (schedules, 0016) loads alone: the migration loader refuses
-- gaps. Drop this file at merge: another branch brings the real 0014.
SELECT 1;
