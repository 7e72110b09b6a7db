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
        {4, "track embeddings for similarity search",
         /* pgvector when the server has it and it can be created here (a
          * failure to create it is not an error: real[] serves then); the
          * column type tells postgres_vec.c which SQL to use. The column is
          * unconstrained `vector` so that models of any size share it. */
         "DO $$\n"
         "BEGIN\n"
         "    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector') THEN\n"
         "        BEGIN\n"
         "            CREATE EXTENSION IF NOT EXISTS vector;\n"
         "        EXCEPTION WHEN OTHERS THEN\n"
         "            RAISE NOTICE 'pgvector is available but cannot be created: %; "
         "using real[]', SQLERRM;\n"
         "        END;\n"
         "    END IF;\n"
         "    EXECUTE format('CREATE TABLE aiq_embeddings (\n"
         "        track_id text PRIMARY KEY,\n"
         "        model text NOT NULL,\n"
         "        dims integer NOT NULL,\n"
         "        embedding %s NOT NULL,\n"
         "        updated_at timestamptz NOT NULL DEFAULT now()\n"
         "    )', CASE WHEN EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector')\n"
         "             THEN 'vector' ELSE 'real[]' END);\n"
         "END\n"
         "$$;\n"
         "CREATE INDEX aiq_embeddings_model_dims_idx ON aiq_embeddings (model, dims);\n"
         /* Cosine similarity of two real[] of the same length; NULL when
          * either is zero or the lengths differ. */
         "CREATE FUNCTION aiq_cosine(a real[], b real[]) RETURNS double precision\n"
         "    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$\n"
         "    SELECT CASE WHEN cardinality(a) = cardinality(b)\n"
         "                 AND sum(x::float8 * x) > 0 AND sum(y::float8 * y) > 0\n"
         "           THEN sum(x::float8 * y) / sqrt(sum(x::float8 * x) * sum(y::float8 * y))\n"
         "           END\n"
         "    FROM unnest(a, b) AS t(x, y)\n"
         "$$;\n"},
        {5, "chord joins",
         /* A chord's header, joined by the libaiqueue workers that run its
          * parts (Celery's database backend has no native join). One row
          * per chord, locked by each part's return; one row per returned
          * part, deduplicated by task id and by group_index so that a part
          * returned twice counts once. fired_by: the part that completed
          * the count (the only caller told to send the body). */
         "CREATE TABLE aiq_chords (\n"
         "    group_id text PRIMARY KEY,\n"
         "    size bigint NOT NULL,\n"
         "    count bigint NOT NULL DEFAULT 0,\n"
         "    fired_by text,\n"
         "    created_at timestamptz NOT NULL DEFAULT now(),\n"
         "    updated_at timestamptz NOT NULL DEFAULT now()\n"
         ");\n"
         "CREATE INDEX aiq_chords_updated_at_idx ON aiq_chords (updated_at);\n"
         "CREATE TABLE aiq_chord_parts (\n"
         "    group_id text NOT NULL REFERENCES aiq_chords ON DELETE CASCADE,\n"
         "    group_index bigint,\n"
         "    task_id text NOT NULL,\n"
         "    entry text NOT NULL,\n"
         "    PRIMARY KEY (group_id, task_id),\n"
         "    UNIQUE (group_id, group_index)\n"
         ");\n"
         /* The chord's row lock first, so that concurrent parts count one
          * after the other and chord_done's DELETE cannot interleave; an
          * expired chord reads as absent. True for the part whose return
          * completed the count, and again for that part's own retry. */
         "CREATE FUNCTION aiq_chord_part_return(gid text, gindex bigint, tid text,\n"
         "                                      part text, expires_s bigint)\n"
         "    RETURNS boolean LANGUAGE plpgsql AS $$\n"
         "DECLARE\n"
         "    c aiq_chords%ROWTYPE;\n"
         "    n bigint;\n"
         "BEGIN\n"
         "    SELECT * INTO c FROM aiq_chords WHERE group_id = gid FOR UPDATE;\n"
         "    IF NOT FOUND OR (expires_s > 0\n"
         "                     AND c.updated_at < now() - expires_s * interval '1 second') THEN\n"
         "        RETURN false;\n"
         "    END IF;\n"
         "    INSERT INTO aiq_chord_parts (group_id, group_index, task_id, entry)\n"
         "        VALUES (gid, gindex, tid, part) ON CONFLICT DO NOTHING;\n"
         "    GET DIAGNOSTICS n = ROW_COUNT;\n"
         "    UPDATE aiq_chords SET count = c.count + n, updated_at = now(),\n"
         "        fired_by = CASE WHEN c.fired_by IS NULL AND c.count + n >= c.size\n"
         "                        THEN tid ELSE c.fired_by END\n"
         "        WHERE group_id = gid RETURNING fired_by INTO c.fired_by;\n"
         "    RETURN c.fired_by IS NOT DISTINCT FROM tid;\n"
         "END\n"
         "$$;\n"},
};

#define AIQ__PG_NMIGRATIONS    (sizeof aiq__pg_migrations / sizeof aiq__pg_migrations[0])
#define AIQ__PG_NOTIFY_CHANNEL "aiq_task_done"

#endif /* AIQ_POSTGRES_SCHEMA_H */
