/*
 * The task model and the Celery protocol codec (protocol v2 on encode; v2 and
 * v1 on decode), plus kombu's Redis envelope. Transport-neutral: drivers move
 * an aiq__wire; only this file's implementation knows Celery's field layout.
 */
#ifndef AIQ_MESSAGE_H
#define AIQ_MESSAGE_H

#include "internal.h"

#include <jansson.h>

/* Upper bound for one encoded message body, and for an envelope. */
#define AIQ__MAX_MESSAGE_BYTES (64u * 1024u * 1024u)
/* The longest task id and task name a received message may carry (bytes):
 * AMQP's shortstr width, above Celery's 155-byte id column. */
#define AIQ__MAX_RECEIVED_NAME 255

struct aiq__message;

/* One message as a transport carries it. */
typedef struct aiq__wire {
	json_t *headers;        /* object (AMQP header table / envelope "headers"); NULL for v1 */
	json_t *properties;     /* object: correlation_id, reply_to, delivery_mode, priority,
	                           expiration (string, ms), delivery_info, ... */
	char *content_type;     /* "application/json" */
	char *content_encoding; /* "utf-8" */
	unsigned char *body;    /* raw body bytes (not base64) */
	size_t body_len;
	/* Optional: the decoded model of this very message (what
	 * aiq__message_from_wire() would give), owned by the wire and freed by
	 * aiq__wire_clear(); aiq__wire_copy() never copies it. A process-local
	 * broker takes it at publish (and sets it NULL, although publish gets
	 * the wire const) to hand it to the one consumer that fetches the
	 * message, which then skips the decode. Other drivers ignore it. */
	struct aiq__message *local;
} aiq__wire;

void aiq__wire_clear(aiq__wire *w);
/* A JSON string of `text` (NULL = ""), with bytes that are not valid UTF-8
 * replaced by '?': json_string() refuses them, and a dead-letter reason
 * must never be lost for it. NULL only when out of memory. */
json_t *aiq__json_string_lossy(const char *text);
/* "object", "array", "string", "integer", "real", "boolean" or "null", for
 * messages that say what a field was instead of what it should be. */
const char *aiq__json_type_name(const json_t *v);
int aiq__wire_copy(aiq__wire *dst, const aiq__wire *src);

/* The task model. Strings are owned and NULL when absent. */
typedef struct aiq__message {
	int protocol; /* 2 or 1 (as decoded); 2 when built locally */
	char *id;
	char *task;
	char *lang;
	char *shadow;
	char *root_id;
	char *parent_id;
	char *group;
	char *origin;
	char *argsrepr;
	char *kwargsrepr;
	json_t *args;   /* array, never NULL after decode */
	json_t *kwargs; /* object, never NULL after decode */
	json_t *embed;  /* object {callbacks, errbacks, chain, chord}; never NULL after decode */
	int retries;
	int64_t eta_us;         /* absolute UNIX µs; 0 = none */
	int64_t expires_us;     /* absolute UNIX µs; 0 = none */
	double time_limit;      /* hard limit in seconds; 0 = none (timelimit[0]) */
	double soft_time_limit; /* soft limit in seconds; 0 = none (timelimit[1]) */
	bool ignore_result;
	int max_retries;       /* -1 = not given (header "x-aiq-max-retries") */
	json_t *extra_headers; /* object of headers this model does not name; may be NULL */
	/* properties */
	char *correlation_id;
	char *reply_to;
	int priority;      /* 0..255 */
	int delivery_mode; /* 2 = persistent */
} aiq__message;

void aiq__message_init(aiq__message *m);
void aiq__message_clear(aiq__message *m);

/* Build the wire form: Celery v2 headers in Celery's order and types, body
 * `[args, kwargs, embed]` as JSON with Python's default separators, the
 * properties object. `m->id` and `m->task` must be set; args/kwargs/embed
 * default to [], {}, and the null embed. AIQ_EINVAL / AIQ_ETOOBIG / AIQ_ENOMEM. */
int aiq__message_to_wire(aiq__wire *out, const aiq__message *m);

/* Decode a wire message (protocol v2, or v1 when there is no "task" header and
 * the body is a dict). On failure returns AIQ_EPROTO with a precise detail
 * in aiq_error_last() and leaves `out` cleared; if the id could be read it is
 * left in out->id (and the name in out->task) so the caller can report it. */
int aiq__message_from_wire(aiq__message *out, const aiq__wire *in);

/* The decoded model of `in`, which was just encoded from `src` by
 * aiq__message_to_wire(), for a process-local handoff: the headers and
 * properties are decoded from `in` by the code aiq__message_from_wire()
 * uses, and args/kwargs are moved out of `src` (left NULL there) instead of
 * parsing the body that was made of them. *out is malloc'd (free with
 * aiq__message_free). Protocol v2 wires only. */
int aiq__message_local(struct aiq__message **out, const aiq__wire *in, struct aiq__message *src);
/* Clear and free a malloc'd message; NULL is a no-op. */
void aiq__message_free(struct aiq__message *m);

/* kombu's Redis envelope:
 * {"body": base64, "content-encoding", "content-type", "headers",
 *  "properties": {..., "delivery_info": {"exchange", "routing_key"},
 *                 "body_encoding": "base64", "delivery_tag": tag}} */
int aiq__envelope_encode(char **out, size_t *out_len, const aiq__wire *w, const char *exchange,
                         const char *routing_key, const char *delivery_tag);
/* Decode an envelope; `delivery_tag` (optional) receives a copy of the tag. */
int aiq__envelope_decode(aiq__wire *out, char **delivery_tag, const char *text, size_t len);

/* Python repr() of JSON values as Celery writes argsrepr/kwargsrepr: a
 * tuple for the args array, a dict for kwargs; truncated to `max` bytes. */
char *aiq__pyrepr_args(const json_t *args, size_t max);
char *aiq__pyrepr_kwargs(const json_t *kwargs, size_t max);

/* Serialize with Python json.dumps' default separators (", " and ": "). */
char *aiq__json_dumps_py(const json_t *v);

/* base64 (standard alphabet, padded). Decode rejects anything else. */
char *aiq__base64_encode(const unsigned char *data, size_t len, size_t *out_len);
int aiq__base64_decode(unsigned char **out, size_t *out_len, const char *text, size_t len);

#endif /* AIQ_MESSAGE_H */
