-- Placeholder so that this branch (budgets, 0017) loads alone: the migration loader refuses
-- gaps. Drop this file at merge: another branch brings the real 0014.
SELECT 1;
