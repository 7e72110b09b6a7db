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
        {6, "rate limit buckets, unique keys and concurrency leases",
         /* Shared by every worker and client on this database (coord.h).
          * Buckets and leases are UNLOGGED: after a crash of the server
          * (or on a promoted standby) they start again empty, which means
          * full buckets and free slots; a unique key is kept. Every time
          * is the server's clock_timestamp(). */
         "CREATE UNLOGGED TABLE aiq_buckets (\n"
         "    key text PRIMARY KEY,\n"
         "    tokens double precision NOT NULL,\n"
         "    ts timestamptz NOT NULL,\n"
         "    full_at timestamptz NOT NULL\n"
         ");\n"
         "CREATE INDEX aiq_buckets_full_at_idx ON aiq_buckets (full_at);\n"
         /* The token bucket: refill since ts, at most burst, then take
          * `cost` (the bucket may go into debt). The row lock orders
          * concurrent takes; a missing row is a full bucket. */
         "CREATE FUNCTION aiq_bucket(k text, rate double precision, burst double precision,\n"
         "                           cost double precision, take boolean,\n"
         "                           OUT wait_us bigint, OUT tokens double precision)\n"
         "    LANGUAGE plpgsql AS $$\n"
         "DECLARE\n"
         "    t double precision;\n"
         "    at timestamptz;\n"
         "    now_ts timestamptz;\n"
         "BEGIN\n"
         "    IF take THEN\n"
         "        INSERT INTO aiq_buckets VALUES (k, burst, clock_timestamp(), clock_timestamp())\n"
         "            ON CONFLICT (key) DO NOTHING;\n"
         "        SELECT b.tokens, b.ts INTO t, at FROM aiq_buckets b WHERE b.key = k FOR UPDATE;\n"
         "    ELSE\n"
         "        SELECT b.tokens, b.ts INTO t, at FROM aiq_buckets b WHERE b.key = k;\n"
         "    END IF;\n"
         "    now_ts := clock_timestamp();\n"
         "    IF t IS NULL THEN\n"
         "        t := burst;\n"
         "        at := now_ts;\n"
         "    END IF;\n"
         "    IF now_ts > at THEN\n"
         "        t := t + extract(epoch FROM now_ts - at)::double precision * rate;\n"
         "        at := now_ts;\n"
         "    END IF;\n"
         "    IF t > burst THEN\n"
         "        t := burst;\n"
         "    END IF;\n"
         "    IF take THEN\n"
         "        t := t - cost;\n"
         "        UPDATE aiq_buckets b SET tokens = t, ts = at,\n"
         "            full_at = at + ((burst - t) / rate) * interval '1 second'\n"
         "            WHERE b.key = k;\n"
         "    END IF;\n"
         "    tokens := t;\n"
         "    wait_us := CASE WHEN t < 0 THEN ceil(-t * 1000000 / rate)::bigint ELSE 0 END;\n"
         "END\n"
         "$$;\n"
         "CREATE TABLE aiq_claims (\n"
         "    key text PRIMARY KEY,\n"
         "    value text NOT NULL,\n"
         "    expires_at timestamptz NOT NULL\n"
         ");\n"
         "CREATE INDEX aiq_claims_expires_at_idx ON aiq_claims (expires_at);\n"
         /* NULL when this call claimed the key (or an ended claim of it),
          * else the value holding it. Each statement sees what committed
          * before it, so a claim released between the two is tried again. */
         "CREATE FUNCTION aiq_claim(k text, v text, ttl_ms bigint) RETURNS text\n"
         "    LANGUAGE plpgsql AS $$\n"
         "DECLARE\n"
         "    holder text;\n"
         "BEGIN\n"
         "    LOOP\n"
         "        INSERT INTO aiq_claims AS c VALUES\n"
         "            (k, v, clock_timestamp() + ttl_ms * interval '1 millisecond')\n"
         "            ON CONFLICT (key) DO UPDATE\n"
         "            SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at\n"
         "            WHERE c.expires_at <= clock_timestamp();\n"
         "        IF FOUND THEN\n"
         "            RETURN NULL;\n"
         "        END IF;\n"
         "        SELECT c.value INTO holder FROM aiq_claims c\n"
         "            WHERE c.key = k AND c.expires_at > clock_timestamp();\n"
         "        IF FOUND THEN\n"
         "            RETURN holder;\n"
         "        END IF;\n"
         "    END LOOP;\n"
         "END\n"
         "$$;\n"
         "CREATE UNLOGGED TABLE aiq_leases (\n"
         "    key text NOT NULL,\n"
         "    member text NOT NULL,\n"
         "    expires_at timestamptz NOT NULL,\n"
         "    PRIMARY KEY (key, member)\n"
         ");\n"
         "CREATE INDEX aiq_leases_expires_at_idx ON aiq_leases (expires_at);\n"
         /* A transaction-level advisory lock per key (class 7022 of the
          * two-key space) orders the takes of one key; ended leases go
          * first, so a worker killed with kill -9 frees its slots. */
         "CREATE FUNCTION aiq_lease_take(k text, m text, lim bigint, lease_ms bigint)\n"
         "    RETURNS boolean LANGUAGE plpgsql AS $$\n"
         "BEGIN\n"
         "    PERFORM pg_advisory_xact_lock(7022, hashtext(k));\n"
         "    DELETE FROM aiq_leases l WHERE l.key = k AND l.expires_at <= clock_timestamp();\n"
         "    IF NOT EXISTS (SELECT 1 FROM aiq_leases l WHERE l.key = k AND l.member = m)\n"
         "       AND (SELECT count(*) FROM aiq_leases l WHERE l.key = k) >= lim THEN\n"
         "        RETURN false;\n"
         "    END IF;\n"
         "    INSERT INTO aiq_leases VALUES\n"
         "        (k, m, clock_timestamp() + lease_ms * interval '1 millisecond')\n"
         "        ON CONFLICT (key, member) DO UPDATE SET expires_at = EXCLUDED.expires_at;\n"
         "    RETURN true;\n"
         "END\n"
         "$$;\n"},
};

#define AIQ__PG_NMIGRATIONS    (sizeof aiq__pg_migrations / sizeof aiq__pg_migrations[0])
#define AIQ__PG_NOTIFY_CHANNEL "aiq_task_done"

#endif /* AIQ_POSTGRES_SCHEMA_H */
