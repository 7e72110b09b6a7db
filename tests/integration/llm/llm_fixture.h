/*
 * The llm suite's local OpenAI-compatible test server (llm_fixture.c).
 */
#ifndef AIQ_LLM_FIXTURE_H
#define AIQ_LLM_FIXTURE_H

#include <stdint.h>

#define API_KEY "sk-test-5f1c0ffee"

/* The server's port once server_start() returned. */
extern int server_port;

void sleep_ms(int ms);
int64_t now_ms(void);
/* Start openai_server.py (exits the program when it cannot). */
void server_start(void);
/* Stop it and remove its temporary directory. */
void server_stop(void);
/* How many requests the server saw for a model. */
int requests_for(const char *model);

#endif
