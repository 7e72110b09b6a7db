/*
 * What the worker's analyze path needs from the similarity API
 * (similar.c), without reaching the embedder itself.
 */
#ifndef AIQ_SIMILAR_INT_H
#define AIQ_SIMILAR_INT_H

#include "internal.h"

/* The PostgreSQL store embeddings go to: archive.url when it is a
 * postgresql:// (or postgres://) URL, else result.url when it is one, else
 * NULL. Borrowed from cfg. */
const char *aiq__similar_store_url(const aiq_config *cfg);
/* Check the embed.* settings (and the llm endpoint they may name) without
 * connecting: AIQ_OK, AIQ_EINVAL naming the problem, or AIQ_EUNSUPPORTED. */
int aiq__similar_check_config(const aiq_config *cfg);

#endif /* AIQ_SIMILAR_INT_H */
