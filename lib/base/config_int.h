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

/* The llm.presets grammar, "name=field:value,field:value;name2=…", read
 * once for the configuration's check and the LLM analyzer's registration.
 * aiq__preset_next() reads the preset at *pos: 1 when it read one (and
 * moved *pos past it), 0 at the end, AIQ_EINVAL (message naming `key`)
 * when the text there is not name=fields. aiq__preset_field_next() gives
 * the preset's next non-empty field, trimmed of blanks. */
struct aiq__preset {
	const char *name; /* trimmed, nlen > 0 */
	size_t nlen;
	const char *fields; /* after '=', up to the next ';' */
	const char *end;
};
int aiq__preset_next(const char **pos, struct aiq__preset *out, const char *key);
bool aiq__preset_field_next(const struct aiq__preset *p, const char **pos, const char **field,
                            size_t *flen);

#endif /* AIQ_CONFIG_INT_H */
