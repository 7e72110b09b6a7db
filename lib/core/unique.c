/*
 * Unique jobs: keys claimed by producers, released by workers (unique.h).
 */
#include "unique.h"

#include "coord.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uuid/uuid.h>

#define KEY_PREFIX "aiq:unique:"

struct aiq__unique {
	aiq__coord *coord; /* NULL: the process-wide table below */
};

/* Keys of the processes' memory:// deployments: one table per process,
 * as the memory broker is one per process. */
struct local_key {
	char *key;
	char *id;
	int64_t expires_mono;
};
static pthread_mutex_t local_lock = PTHREAD_MUTEX_INITIALIZER;
static struct local_key *local_keys;
static size_t nlocal_keys;

int aiq__unique_new(aiq__unique **out, const aiq_config *cfg)
{
	*out = NULL;
	aiq__unique *u = calloc(1, sizeof *u);
	if (u == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	int rc = aiq__coord_open(&u->coord, AIQ_CFG_UNIQUE_URL, cfg, AIQ_ESTORE, AIQ__COORD_ANY);
	if (rc != AIQ_OK) {
		free(u);
		return rc;
	}
	*out = u;
	return AIQ_OK;
}

void aiq__unique_free(aiq__unique *u)
{
	if (u == NULL)
		return;
	aiq__coord_free(u->coord);
	free(u);
}

char *aiq__unique_key(const char *explicit_key, const char *task, const char *args_json,
                      const char *kwargs_json)
{
	if (explicit_key)
		return aiq__asprintf("%s%s", KEY_PREFIX, explicit_key);
	json_t *args = json_loads(args_json ? args_json : "[]", 0, NULL);
	json_t *kwargs = json_loads(kwargs_json ? kwargs_json : "{}", 0, NULL);
	json_t *both = args && kwargs ? json_pack("[OO]", args, kwargs) : NULL;
	char *canon = both ? json_dumps(both, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
	json_decref(args);
	json_decref(kwargs);
	json_decref(both);
	if (canon == NULL)
		return NULL;
	/* A name-based UUID (SHA-1, RFC 4122 version 5) in the URL namespace:
	 * libuuid's well-kept digest, 122 bits of it. */
	uuid_t ns, h;
	uuid_parse("6ba7b811-9dad-11d1-80b4-00c04fd430c8", ns);
	uuid_generate_sha1(h, ns, canon, strlen(canon));
	free(canon);
	char hex[37];
	uuid_unparse_lower(h, hex);
	return aiq__asprintf("%s%s:%s", KEY_PREFIX, task, hex);
}

static int local_claim(char **holder, const char *key, const char *task_id, int64_t ttl_ms)
{
	int64_t now = aiq__mono_ms();
	int rc = AIQ_OK;
	pthread_mutex_lock(&local_lock);
	struct local_key *slot = NULL;
	for (size_t i = 0; i < nlocal_keys; i++) {
		struct local_key *k = &local_keys[i];
		if (k->expires_mono <= now && !slot) {
			slot = k; /* expired: reuse */
			free(k->key);
			free(k->id);
			k->key = k->id = NULL;
		} else if (k->key && strcmp(k->key, key) == 0 && k->expires_mono > now) {
			if (strcmp(k->id, task_id) != 0 && (*holder = aiq__strdup(k->id)) == NULL)
				rc = aiq__err(AIQ_ENOMEM, "out of memory");
			pthread_mutex_unlock(&local_lock);
			return rc;
		}
	}
	if (slot == NULL) {
		struct local_key *grown = realloc(local_keys, (nlocal_keys + 1) * sizeof *grown);
		if (grown == NULL) {
			pthread_mutex_unlock(&local_lock);
			return aiq__err(AIQ_ENOMEM, "out of memory");
		}
		local_keys = grown;
		slot = &local_keys[nlocal_keys++];
		memset(slot, 0, sizeof *slot);
	}
	slot->key = aiq__strdup(key);
	slot->id = aiq__strdup(task_id);
	slot->expires_mono = now + ttl_ms;
	if (slot->key == NULL || slot->id == NULL) {
		free(slot->key);
		free(slot->id);
		slot->key = slot->id = NULL;
		slot->expires_mono = 0;
		rc = aiq__err(AIQ_ENOMEM, "out of memory");
	}
	pthread_mutex_unlock(&local_lock);
	return rc;
}

/* The entry of an expired key is kept (expires_mono 0) and reused. */
static void local_release(const char *key, const char *task_id)
{
	pthread_mutex_lock(&local_lock);
	for (size_t i = 0; i < nlocal_keys; i++) {
		struct local_key *k = &local_keys[i];
		if (k->key && strcmp(k->key, key) == 0 && strcmp(k->id, task_id) == 0)
			k->expires_mono = 0;
	}
	pthread_mutex_unlock(&local_lock);
}

int aiq__unique_claim(aiq__unique *u, char **holder, const char *key, const char *task_id,
                      int64_t ttl_ms)
{
	*holder = NULL;
	if (u->coord == NULL)
		return local_claim(holder, key, task_id, ttl_ms);
	return aiq__coord_claim(u->coord, holder, key, task_id, ttl_ms);
}

int aiq__unique_release(aiq__unique *u, const char *key, const char *task_id)
{
	if (u->coord == NULL) {
		local_release(key, task_id);
		return AIQ_OK;
	}
	return aiq__coord_release(u->coord, key, task_id);
}

static const char *const scope_names[] = {NULL, "queued", "running", "until_success"};

int aiq__unique_tag(aiq__wire *wire, const char *key, int scope)
{
	json_t *h = json_pack("{s:s, s:s}", "key", key, "scope", scope_names[scope]);
	if (h == NULL || !wire->headers ||
	    json_object_set(wire->headers, AIQ__UNIQUE_HEADER, h) != 0) {
		json_decref(h);
		return aiq__err(AIQ_ENOMEM, "out of memory");
	}
	if (wire->local) {
		aiq__message *m = wire->local;
		if (m->extra_headers == NULL)
			m->extra_headers = json_object();
		if (m->extra_headers == NULL ||
		    json_object_set(m->extra_headers, AIQ__UNIQUE_HEADER, h) != 0) {
			/* The consumer decodes the wire instead. */
			aiq__message_free(wire->local);
			wire->local = NULL;
		}
	}
	json_decref(h);
	return AIQ_OK;
}

int aiq__unique_enqueue_claim(aiq__unique *u, aiq__wire *wire, char **key_out, char **holder,
                              const char *explicit_key, int64_t ttl_ms, int scope, const char *task,
                              const char *args_json, const char *kwargs_json, const char *task_id)
{
	*holder = NULL;
	*key_out = aiq__unique_key(explicit_key, task, args_json, kwargs_json);
	if (*key_out == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory");
	int rc = aiq__unique_tag(wire, *key_out, scope);
	if (rc == AIQ_OK)
		rc = aiq__unique_claim(u, holder, *key_out, task_id, ttl_ms);
	if (rc != AIQ_OK)
		return aiq__err(rc, "unique key not claimed, nothing sent: %s", aiq_error_last());
	return AIQ_OK;
}

/* Release the message's key if its scope is one of `scopes` (a mask of
 * 1 << AIQ_UNIQUE_*). */
static void release_if(aiq__unique *u, const aiq__message *m, unsigned scopes, const char *when)
{
	const json_t *h = json_object_get(m->extra_headers, AIQ__UNIQUE_HEADER);
	const char *key = json_string_value(json_object_get(h, "key"));
	const char *scope = json_string_value(json_object_get(h, "scope"));
	if (u == NULL || key == NULL || scope == NULL || m->id == NULL)
		return;
	for (int s = AIQ_UNIQUE_QUEUED; s <= AIQ_UNIQUE_UNTIL_SUCCESS; s++)
		if ((scopes & (1u << s)) && strcmp(scope, scope_names[s]) == 0) {
			if (aiq__unique_release(u, key, m->id) != AIQ_OK)
				aiq__log(AIQ_LOG_WARNING,
				         "task %s %s: its unique key stays until its TTL (%s)",
				         m->id, when, aiq_error_last());
			return;
		}
}

void aiq__unique_on_start(aiq__unique *u, const aiq__message *m)
{
	release_if(u, m, 1u << AIQ_UNIQUE_QUEUED, "started");
}

void aiq__unique_on_final(aiq__unique *u, const aiq__message *m, int state)
{
	unsigned scopes = (1u << AIQ_UNIQUE_QUEUED) | (1u << AIQ_UNIQUE_RUNNING);
	if (state == AIQ_STATE_SUCCESS)
		scopes |= 1u << AIQ_UNIQUE_UNTIL_SUCCESS;
	release_if(u, m, scopes, "ended");
}
