/*
 * The analyze path's embeddings (embed_sink.c): after the built-in analysis
 * task's analyzer succeeded, the embedding of the analysed text is stored
 * for its track id in the PostgreSQL store (archive.url when it is
 * PostgreSQL, else result.url), when embed.enabled is on. A failure is
 * logged and never changes the task's outcome.
 */
#ifndef AIQ_EMBED_SINK_H
#define AIQ_EMBED_SINK_H

#include "internal.h"

#include <jansson.h>

struct aiq__embed_sink;

/* *out NULL (and AIQ_OK) when embeddings are off or no store is
 * PostgreSQL. AIQ_EINVAL when the embed settings are unusable (an unknown
 * embed.preset, …), so a worker fails at creation, not at every task. */
int aiq__embed_sink_new(struct aiq__embed_sink **out, const aiq_config *cfg);
void aiq__embed_sink_free(struct aiq__embed_sink *s);
/* Store the text's embedding for the track (a JSON string or integer).
 * Any thread; the store's connection opens on first use. */
void aiq__embed_sink_store(struct aiq__embed_sink *s, const json_t *track, const char *text,
                           size_t len);

#endif /* AIQ_EMBED_SINK_H */
