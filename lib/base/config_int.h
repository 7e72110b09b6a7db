/*
 * Typed reads of a configuration for the library's own use.
 */
#ifndef AIQ_CONFIG_INT_H
#define AIQ_CONFIG_INT_H

#include "config_keys.h"
#include "internal.h"

/* The library's reads, by identifier (config_keys.h): a string key's value
 * (borrowed from cfg), an integer key's, a boolean key's. A NULL cfg reads
 * the declared default, so no caller repeats one. */
const char *aiq__cfg_str(const aiq_config *cfg, enum aiq__cfg_str key);
int64_t aiq__cfg_int(const aiq_config *cfg, enum aiq__cfg_int key);
bool aiq__cfg_bool(const aiq_config *cfg, enum aiq__cfg_bool key);
/* The upper bound of an integer key. */
int64_t aiq__cfg_int_max(enum aiq__cfg_int key);

/* For config_env.c: the boolean words aiq_config_set() takes (0 or -1),
 * the value itself when it is safe to put in a message (else "?"), and an
 * exchange of two configurations' contents. */
int aiq__config_parse_bool(const char *text, int *out);
const char *aiq__config_shown(const char *value);
void aiq__config_swap(aiq_config *a, aiq_config *b);

/* The key table, for the environment reader and for tests that must cover
 * every key: the number of keys, the name of key `i` (NULL past the end),
 * and its declaration (false past the end). `i` is an AIQ_CFG_* identifier
 * or a position below aiq__config_key_count(). */
size_t aiq__config_key_count(void);
const char *aiq__config_key_name(size_t i);
struct aiq__config_key_info {
	const char *name;
	const char *type;    /* "string", "int" or "bool", as docs/configuration.md says */
	const char *def_str; /* string keys' default, else NULL */
	int64_t def_int;     /* integer and boolean keys' default */
	int64_t min, max;    /* integer keys' range (booleans: 0 and 1) */
};
bool aiq__config_key_info(size_t i, struct aiq__config_key_info *out);

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
