/*
 * Every configuration key, assembled from its owner's declaration list:
 * the core's (config_core.def) and each driver's and analyzer's
 * (<owner>_keys.def beside its code). A key is declared once, there, with
 * its type, default and what it accepts; config.c builds its table from
 * these lists, and the library reads a key through its identifier:
 *
 *     aiq__cfg_int(cfg, AIQ_CFG_REDIS_SOCKET_TIMEOUT_MS)
 *
 * The identifiers are enumerators of one enum per type, so a misspelt key
 * does not compile, and reading a key as the wrong type is an
 * -Wenum-conversion error (warnings are errors in this project).
 *
 * To add a key: one AIQ_KEY_* line in its owner's list, one row in
 * docs/configuration.md's table (the unit suite compares the two), and a
 * case in tests/unit/test_config.c's key_cases.
 */
#ifndef AIQ_CONFIG_KEYS_H
#define AIQ_CONFIG_KEYS_H

#include <stdint.h>

#define AIQ__DAY_S   86400
#define AIQ__HOUR_MS (3600 * 1000)

/* The owners' lists, in table order. */
#define AIQ__CONFIG_KEY_LISTS "config_keys_all.def"

/* Position of every key in the table. */
enum aiq__cfg_index {
#define AIQ_KEY_STR(id, name, def, check)  AIQ__CFGI_##id,
#define AIQ_KEY_INT(id, name, def, lo, hi) AIQ__CFGI_##id,
#define AIQ_KEY_BOOL(id, name, def)        AIQ__CFGI_##id,
#include AIQ__CONFIG_KEY_LISTS
#undef AIQ_KEY_STR
#undef AIQ_KEY_INT
#undef AIQ_KEY_BOOL
	AIQ__CFG_NKEYS
};

#define AIQ__CFG_NONE(id, ...)
/* String keys: aiq__cfg_str(). */
enum aiq__cfg_str {
#define AIQ_KEY_STR(id, name, def, check) AIQ_CFG_##id = AIQ__CFGI_##id,
#define AIQ_KEY_INT                       AIQ__CFG_NONE
#define AIQ_KEY_BOOL                      AIQ__CFG_NONE
#include AIQ__CONFIG_KEY_LISTS
#undef AIQ_KEY_STR
#undef AIQ_KEY_INT
#undef AIQ_KEY_BOOL
	AIQ__CFG_STR_END = AIQ__CFG_NKEYS
};
/* Integer keys: aiq__cfg_int(). */
enum aiq__cfg_int {
#define AIQ_KEY_STR                        AIQ__CFG_NONE
#define AIQ_KEY_INT(id, name, def, lo, hi) AIQ_CFG_##id = AIQ__CFGI_##id,
#define AIQ_KEY_BOOL                       AIQ__CFG_NONE
#include AIQ__CONFIG_KEY_LISTS
#undef AIQ_KEY_STR
#undef AIQ_KEY_INT
#undef AIQ_KEY_BOOL
	AIQ__CFG_INT_END = AIQ__CFG_NKEYS
};
/* Boolean keys: aiq__cfg_bool(). */
enum aiq__cfg_bool {
#define AIQ_KEY_STR                 AIQ__CFG_NONE
#define AIQ_KEY_INT                 AIQ__CFG_NONE
#define AIQ_KEY_BOOL(id, name, def) AIQ_CFG_##id = AIQ__CFGI_##id,
#include AIQ__CONFIG_KEY_LISTS
#undef AIQ_KEY_STR
#undef AIQ_KEY_INT
#undef AIQ_KEY_BOOL
	AIQ__CFG_BOOL_END = AIQ__CFG_NKEYS
};
#undef AIQ__CFG_NONE

#endif /* AIQ_CONFIG_KEYS_H */
