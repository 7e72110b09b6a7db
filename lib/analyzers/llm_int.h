/*
 * The LLM analyzer's internals shared with its tests and fuzzer and with
 * the embeddings client (embed.c): the reader of a chat completion answer
 * (apart from the HTTP exchange so that it can be tested over raw bytes),
 * and the HTTP exchange with an OpenAI-compatible server itself.
 */
#ifndef AIQ_LLM_INT_H
#define AIQ_LLM_INT_H

#include "internal.h"

/* Read the body of an HTTP 200 answer from `where` (the redacted base URL)
 * to the analysis `model` was asked for. AIQ_OK: *out (free()) is the task
 * result {"model", "analysis", "usage", "latency_ms"[, "finish_reason"]}.
 * AIQ_EPROTO: *err_type is "LLMProtocolError" (not a chat completion) or
 * "LLMInvalidOutput" (the content is not a JSON object) and err holds the
 * message. AIQ_ENOMEM: *err_type is "MemoryError". */
int aiq__llm_parse_answer(char **out, const char **err_type, char *err, size_t errsize,
                          const char *body, size_t len, const char *model, int64_t latency_ms,
                          bool json_mode, const char *where);

/* One JSON POST to an OpenAI-compatible server. */
struct aiq__llm_request {
	const char *url;     /* the full URL (base URL + path) */
	const char *api_key; /* NULL or "": no Authorization header */
	const char *body;    /* JSON text */
	int64_t timeout_ms, connect_timeout_ms, max_response_bytes, retry_after_max_ms;
	aiq_task *task; /* its cancellation aborts the transfer; may be NULL */
};

struct aiq__llm_reply {
	int curl_rc;            /* a CURLcode: 0 when an HTTP answer arrived */
	long status;            /* HTTP status, 0 when none */
	char *body;             /* the answer's body (NUL-terminated), or NULL */
	size_t len;             /* its length */
	bool over_limit;        /* the body was cut at max_response_bytes */
	int64_t retry_after_ms; /* Retry-After capped at retry_after_max_ms, -1 when absent */
	int64_t latency_ms;
	char curl_error[256]; /* curl's text for a failed transfer */
};

/* curl_global_init() once per process: AIQ_OK or AIQ_ERROR. */
int aiq__llm_start(void);
/* Send the request on this thread's reused curl handle (keep-alive). AIQ_OK
 * when the exchange ran, whatever its outcome (read *out); AIQ_ENOMEM or
 * AIQ_ERROR when it could not start. Clear *out with aiq__llm_reply_clear. */
int aiq__llm_post(struct aiq__llm_reply *out, const struct aiq__llm_request *req);
void aiq__llm_reply_clear(struct aiq__llm_reply *r);
/* 429, 408 and 5xx: worth a retry. */
bool aiq__llm_status_transient(long status);
/* The server's own error text from an error body, an excerpt, on one line. */
void aiq__llm_server_message(char *out, size_t size, const char *body, size_t len);
/* $AIQUEUE_LLM_API_KEY, else $OPENAI_API_KEY, else "". */
const char *aiq__llm_api_key_from_env(void);
/* Replace every occurrence of the key (4 bytes or more) in msg by '*'. */
void aiq__llm_scrub_key(char *msg, const char *key);
/* The endpoint the `llm` settings give (llm.base_url without trailing
 * slashes, and llm.api_key or the environment's key), or those of the
 * llm.presets entry named `preset` when it is not empty. *base_url and
 * *api_key are free()d by the caller. AIQ_EINVAL names an unknown preset or
 * a bad field. */
int aiq__llm_endpoint(char **base_url, char **api_key, const aiq_config *cfg, const char *preset);

#endif /* AIQ_LLM_INT_H */
