/*
 * The LLM analyzer's reader of a chat completion answer, apart from the
 * HTTP exchange so that it can be tested and fuzzed over raw bytes.
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

#endif /* AIQ_LLM_INT_H */
