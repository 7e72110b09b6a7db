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

/* For config_env.c: the boolean words aiq_config_set() takes (0 or -1),
 * the upper bound of an integer key (0 for other keys), the value itself
 * when it is safe to put in a message (else "?"), and an exchange of two
 * configurations' contents. */
int aiq__config_parse_bool(const char *text, int *out);
int64_t aiq__config_int_max(const char *key);
const char *aiq__config_shown(const char *value);
void aiq__config_swap(aiq_config *a, aiq_config *b);

/* The key table, for tests that must cover every key: the number of keys,
 * and the name of key `i` (NULL past the end). */
size_t aiq__config_key_count(void);
const char *aiq__config_key_name(size_t i);

#endif /* AIQ_CONFIG_INT_H */
