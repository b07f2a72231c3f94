-- Reserved for another branch of this session (issue 18, dependencies: 0014_dependencies.sql).
-- A placeholder so that 0015 applies in sequence on this branch; the integrator drops it.
SELECT 1;
