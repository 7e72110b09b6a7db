/*
 * A libaiqueue client for the canvas suite, configured from the environment:
 *   canvas_client chain SPEC...   send a chain of the steps, in order
 *   canvas_client group SPEC...   send a group of the members
 *   canvas_client link SPEC CB [EB]  send SPEC with link CB (and link_error EB)
 *   canvas_client chord BODY SPEC...  send a chord of the members and BODY
 *   canvas_client saved-group SPEC...  send a group and save it (GroupResult.save)
 *   canvas_client restore GROUP_ID   print the saved group's member ids
 * where SPEC is "queue|task|args_json" with an optional "|immutable".
 * Waits up to 30 s for every task sent (chain: every step; link: the
 * parent; chord: the body) and prints {"ids": [...], "group_id", "results": [...],
 * "states": [...]} as JSON on stdout.
 */
#include <aiqueue/aiqueue.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static aiq_signature *parse_spec(const char *spec)
{
	char *copy = strdup(spec);
	char *queue = strtok(copy, "|");
	char *task = strtok(NULL, "|");
	char *args = strtok(NULL, "|");
	char *flag = strtok(NULL, "|");
	aiq_signature *s = NULL;
	int rc = task ? aiq_signature_new(&s, task) : AIQ_EINVAL;
	if (rc == AIQ_OK)
		rc = aiq_signature_set_queue(s, queue);
	if (rc == AIQ_OK && args)
		rc = aiq_signature_set_args_json(s, args);
	if (rc == AIQ_OK && flag && strcmp(flag, "immutable") == 0)
		rc = aiq_signature_set_immutable(s, 1);
	free(copy);
	if (rc != AIQ_OK) {
		fprintf(stderr, "canvas_client: %s: %s\n", spec, aiq_error_last());
		aiq_signature_free(s);
		return NULL;
	}
	return s;
}

static int restore(const char *gid)
{
	aiq_config *cfg = NULL;
	aiq_client *c = NULL;
	char *ids = NULL;
	int rc = aiq_config_new(&cfg);
	if (rc == AIQ_OK)
		rc = aiq_config_load_env(cfg);
	if (rc == AIQ_OK)
		rc = aiq_client_new(&c, cfg);
	if (rc == AIQ_OK)
		rc = aiq_client_restore_group(&ids, c, gid);
	if (rc == AIQ_OK)
		printf("%s\n", ids);
	else
		fprintf(stderr, "canvas_client: %s: %s\n", aiq_strerror(rc), aiq_error_last());
	aiq_free(ids);
	aiq_client_free(c);
	aiq_config_free(cfg);
	return rc == AIQ_OK ? 0 : 1;
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "restore") == 0)
		return restore(argv[2]);
	if (argc < 3) {
		fprintf(stderr, "usage: %s chain|group|link SPEC...\n", argv[0]);
		return 2;
	}
	size_t n = (size_t)argc - 2;
	aiq_signature **sigs = calloc(n, sizeof *sigs);
	char **ids = calloc(n, sizeof *ids);
	char *gid = NULL;
	for (size_t i = 0; i < n; i++)
		if (!(sigs[i] = parse_spec(argv[i + 2])))
			return 2;
	aiq_config *cfg = NULL;
	aiq_client *c = NULL;
	int rc = aiq_config_new(&cfg);
	if (rc == AIQ_OK)
		rc = aiq_config_load_env(cfg);
	if (rc == AIQ_OK)
		rc = aiq_client_new(&c, cfg);
	size_t nwait = n;
	if (rc == AIQ_OK && strcmp(argv[1], "chain") == 0) {
		rc = aiq_client_send_chain(ids, c, (const aiq_signature *const *)sigs, n);
	} else if (rc == AIQ_OK &&
	           (strcmp(argv[1], "group") == 0 || strcmp(argv[1], "saved-group") == 0)) {
		rc = aiq_client_send_group(&gid, ids, c, (const aiq_signature *const *)sigs, n);
		if (rc == AIQ_OK && argv[1][0] == 's')
			rc = aiq_client_save_group(c, gid, (const char *const *)ids, n);
	} else if (rc == AIQ_OK && strcmp(argv[1], "link") == 0) {
		if (n > 1)
			rc = aiq_signature_add_link(sigs[0], sigs[1]);
		if (rc == AIQ_OK && n > 2)
			rc = aiq_signature_add_link_error(sigs[0], sigs[2]);
		if (rc == AIQ_OK)
			rc = aiq_client_send_signature(&ids[0], c, sigs[0]);
		nwait = 1;
	} else if (rc == AIQ_OK && strcmp(argv[1], "chord") == 0 && n > 1) {
		rc = aiq_client_send_chord(&ids[0], ids + 1, c,
		                           (const aiq_signature *const *)sigs + 1, n - 1, sigs[0]);
		nwait = 1;
	} else if (rc == AIQ_OK) {
		rc = AIQ_EINVAL;
	}
	if (rc != AIQ_OK) {
		fprintf(stderr, "canvas_client: %s: %s\n", aiq_strerror(rc), aiq_error_last());
		return 1;
	}
	json_t *out =
	        json_pack("{s:[], s:[], s:[], s:s?}", "ids", "results", "states", "group_id", gid);
	for (size_t i = 0; i < nwait; i++) {
		aiq_result *r = NULL;
		rc = aiq_client_wait(&r, c, ids[i], 30000);
		json_array_append_new(json_object_get(out, "ids"), json_string(ids[i]));
		json_array_append_new(json_object_get(out, "states"),
		                      json_string(r ? aiq_state_name(aiq_result_state(r)) : "?"));
		json_t *res = r && aiq_result_json(r)
		                      ? json_loads(aiq_result_json(r), JSON_DECODE_ANY, NULL)
		                      : NULL;
		json_array_append_new(json_object_get(out, "results"), res ? res : json_null());
		aiq_result_free(r);
	}
	char *text = json_dumps(out, JSON_COMPACT);
	printf("%s\n", text);
	free(text);
	json_decref(out);
	for (size_t i = 0; i < n; i++) {
		aiq_free(ids[i]);
		aiq_signature_free(sigs[i]);
	}
	aiq_free(gid);
	free(ids);
	free(sigs);
	aiq_client_free(c);
	aiq_config_free(cfg);
	return 0;
}
