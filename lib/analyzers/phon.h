/*
 * Phonemes for the lyrics analyzer: espeak-ng's IPA for one word, parsed
 * into vowels and consonants, and the comparison of two line endings by
 * sound (docs/lyrics.md, "Rhyme by sound"). Only built with espeak-ng
 * (AIQ_HAVE_ESPEAK); lyrics.c keeps its spelling rules otherwise.
 *
 * espeak-ng keeps global state and is not thread-safe: every call into it
 * goes through one process-wide mutex here, and the library is initialized
 * once per process (pthread_once), for phoneme retrieval only (no audio
 * device is opened).
 */
#ifndef AIQ_PHON_H
#define AIQ_PHON_H

#include <stdbool.h>
#include <stddef.h>

#define AIQ_PHON_SYM 8 /* bytes of one phone's IPA text, NUL included */

enum { AIQ_PHON_EN, AIQ_PHON_RU };

/* One phone: a vowel nucleus (a diphthong is one) or a consonant. */
typedef struct {
	char sym[AIQ_PHON_SYM]; /* IPA, with its length and palatal marks */
	unsigned char vowel;    /* 1 for a vowel nucleus */
	unsigned char stress;   /* vowels: 0 none, 1 secondary, 2 primary */
} aiq__phone;

/* Rhyme of two line endings. */
enum { AIQ_RHYME_NONE, AIQ_RHYME_SLANT, AIQ_RHYME_PERFECT };

/* true when espeak-ng initialized (the first call does it). Thread-safe. */
bool aiq__phon_available(void);

/* Phones of one word (normalized, NUL-terminated UTF-8) in the voice `voice`
 * (AIQ_PHON_EN or AIQ_PHON_RU): at most `cap` are written to `out`, the
 * last ones when there are more. Returns how many, 0 when espeak-ng gave
 * nothing usable. Thread-safe: a word read before comes from a cache, the
 * others are serialized on the library's mutex. */
size_t aiq__phon_word(aiq__phone *out, size_t cap, const char *word, int voice);

/* Calls of aiq__phon_word() answered from the cache of words already read,
 * and those that went to espeak-ng (for the tests). Thread-safe. */
void aiq__phon_cache_stats(size_t *hits, size_t *misses);

/* Parse espeak-ng's IPA text (exposed for the unit tests). */
size_t aiq__phon_parse(aiq__phone *out, size_t cap, const char *ipa);

/* Vowel nuclei in `p`: the word's syllables. */
size_t aiq__phon_syllables(const aiq__phone *p, size_t n);

/* Index of the vowel a rhyme starts from: the last stressed one (primary
 * or secondary), else the last vowel; n when there is no vowel. */
size_t aiq__phon_rhyme_start(const aiq__phone *p, size_t n);

/* Compare two line endings (phones of their last words). With
 * open_support (Russian), endings on a stressed vowel also need alike
 * phones before it (она / луна, not она / да). Returns
 * AIQ_RHYME_PERFECT when the phones from the rhyme start on are identical,
 * AIQ_RHYME_SLANT when the stressed vowels are the same and what follows is
 * alike by class (see phon.c), AIQ_RHYME_NONE otherwise. `*vowels` gets how
 * many vowels match counting back from the end (2 or more: a multisyllabic
 * rhyme), 0 when they do not rhyme. */
int aiq__phon_rhyme(const aiq__phone *a, size_t na, const aiq__phone *b, size_t nb,
                    bool open_support, int *vowels);

#endif
