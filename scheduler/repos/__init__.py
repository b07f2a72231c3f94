"""Repositories: every SQL statement the scheduler sends lives behind one of these modules
(the text in scheduler/db/queries.sql), one module per aggregate. Callers above the database
(API, CLI, agent) use them and never hold SQL text; see docs/architecture.md."""
