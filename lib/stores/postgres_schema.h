/*
 * The PostgreSQL store's schema, as numbered migrations.
 *
 * Rule: a migration that has shipped is never edited. A schema change is a
 * new entry at the end with the next number; the store applies every entry
 * newer than the highest version in aiq_schema_migrations, in order, in one
 * transaction under an advisory lock (postgres.c). docs/postgres.md shows the
 * resulting schema.
 */
#ifndef AIQ_POSTGRES_SCHEMA_H
#define AIQ_POSTGRES_SCHEMA_H

/* Key of the transaction-level advisory lock taken while migrating
 * ("aiqschm" in ASCII), so concurrent workers never race. */
#define AIQ__PG_SCHEMA_LOCK_KEY "7022353993461101"

#define AIQ__PG_MIGRATIONS_TABLE                                                                   \
	"CREATE TABLE IF NOT EXISTS aiq_schema_migrations (\n"                                     \
	"    version integer PRIMARY KEY,\n"                                                       \
	"    applied_at timestamptz NOT NULL DEFAULT now()\n"                                      \
	")"

struct aiq__pg_migration {
	int version;
	const char *description;
	const char *sql; /* one or more statements, run with PQexec */
};

static const struct aiq__pg_migration aiq__pg_migrations[] = {
        {1, "task and analysis tables",
         "CREATE TABLE aiq_tasks (\n"
         "    id text PRIMARY KEY,\n"
         "    name text,\n"
         "    state text NOT NULL,\n"
         "    result jsonb,\n"
         "    error jsonb,\n"
         "    retries integer NOT NULL DEFAULT 0,\n"
         "    worker text,\n"
         "    queue text,\n"
         "    parent_id text,\n"
         "    created_at timestamptz NOT NULL DEFAULT now(),\n"
         "    started_at timestamptz,\n"
         "    done_at timestamptz,\n"
         "    updated_at timestamptz NOT NULL DEFAULT now()\n"
         ");\n"
         "CREATE TABLE aiq_analyses (\n"
         "    id bigserial PRIMARY KEY,\n"
         "    track_id text NOT NULL,\n"
         "    task_id text NOT NULL UNIQUE,\n"
         "    analyzer text,\n"
         "    result jsonb,\n"
         "    created_at timestamptz NOT NULL DEFAULT now()\n"
         ");\n"},
        {2, "indexes for expiry and queries",
         "CREATE INDEX aiq_tasks_state_idx ON aiq_tasks (state);\n"
         "CREATE INDEX aiq_tasks_updated_at_idx ON aiq_tasks (updated_at);\n"
         "CREATE INDEX aiq_tasks_done_at_idx ON aiq_tasks (done_at);\n"
         "CREATE INDEX aiq_analyses_track_id_idx ON aiq_analyses (track_id);\n"
         "CREATE INDEX aiq_analyses_analyzer_idx ON aiq_analyses (analyzer);\n"},
        {3, "raw JSON column and completion notifications",
         /* jsonb cannot hold a string with U+0000; such results keep their
          * text here and leave result NULL. */
         "ALTER TABLE aiq_tasks ADD COLUMN result_raw text;\n"
         "CREATE FUNCTION aiq_task_notify() RETURNS trigger LANGUAGE plpgsql AS $$\n"
         "BEGIN\n"
         "    PERFORM pg_notify('aiq_task_done', NEW.id);\n"
         "    RETURN NULL;\n"
         "END\n"
         "$$;\n"
         "CREATE TRIGGER aiq_tasks_notify AFTER INSERT OR UPDATE ON aiq_tasks\n"
         "    FOR EACH ROW WHEN (NEW.state IN ('SUCCESS', 'FAILURE', 'REVOKED'))\n"
         "    EXECUTE FUNCTION aiq_task_notify();\n"},
};

#define AIQ__PG_NMIGRATIONS    (sizeof aiq__pg_migrations / sizeof aiq__pg_migrations[0])
#define AIQ__PG_NOTIFY_CHANNEL "aiq_task_done"

#endif /* AIQ_POSTGRES_SCHEMA_H */
