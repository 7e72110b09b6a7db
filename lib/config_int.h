/*
 * Typed reads of a configuration for the library's own use.
 */
#ifndef AIQ_CONFIG_INT_H
#define AIQ_CONFIG_INT_H

#include "internal.h"

/* Borrowed value of a string key ("" for keys that are not string keys). */
const char *aiq__config_str(const aiq_config *cfg, const char *key);
/* Value of an integer or boolean key (0 for keys that are neither). */
int64_t aiq__config_int(const aiq_config *cfg, const char *key);

/* The key table, for tests that must cover every key: the number of keys,
 * and the name of key `i` (NULL past the end). */
size_t aiq__config_key_count(void);
const char *aiq__config_key_name(size_t i);

#endif /* AIQ_CONFIG_INT_H */
