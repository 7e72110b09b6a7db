/*
 * The built-in "lyrics" analyzer: counts, syllables, end and internal
 * rhymes, flow, repeated lines, frequent words, lexicon sentiment and a
 * script-based language guess, computed in one pass over the text plus
 * linear passes over the lines and the distinct words. docs/lyrics.md
 * describes every feature and its exact rules.
 *
 * Three optional libraries replace hand-written rules when the build has
 * them: utf8proc (case folding, NFKC, letter and mark classes), espeak-ng
 * (phonemes: rhymes and syllables by sound, phon.c) and libstemmer
 * (Snowball stems for top words and hooks).
 *
 * Everything lives in a per-call context, so calls on many threads at once
 * share nothing but the const word lists, and espeak-ng, which phon.c
 * serializes. Each call makes its own stemmers (sb_stemmer is not
 * thread-safe; creating one is a few small allocations).
 */
#include "analyzer.h"
#include "internal.h"
#include "lyrics_lexicon.h"

#include <jansson.h>
#include <math.h>
#ifdef AIQ_HAVE_ESPEAK
#include "phon.h"
#endif
#ifdef AIQ_HAVE_UTF8PROC
#include <utf8proc.h>
#endif
#ifdef AIQ_HAVE_STEMMER
#include <libstemmer.h>
#endif
#include <stdlib.h>
#include <string.h>

#define LYR_MAX_TEXT        (1024u * 1024u) /* bytes */
#define LYR_DEFAULT_TOP     10
#define LYR_MAX_TOP         100
#define LYR_MAX_HOOKS       20   /* hooks listed in the output */
#define LYR_HOOK_TEXT_MAX   256  /* bytes of a hook's text shown */
#define LYR_SCHEME_STANZAS  100  /* stanzas listed in rhyme_scheme */
#define LYR_SCHEME_LINES    200  /* letters per stanza in rhyme_scheme */
#define LYR_RHYME_WINDOW    3    /* a rhyming partner is at most this many lines away */
#define LYR_NEGATION_SCOPE  3    /* words a negator reaches */
#define LYR_LABEL_THRESHOLD 0.25 /* |score| from which a label is not "neutral" */
#define LYR_NO_ID           UINT32_MAX
#define LYR_LOOKBACK        16   /* lines back where a line's scheme partner may be */
#define LYR_MAX_PAIRS       200  /* rhyme pairs listed */
#define LYR_FLOW_LINES      500  /* lines listed in flow.syllables_per_line */
#define LYR_INTERNAL_WINDOW 8    /* words back where an internal rhyme may be */
#define LYR_TAIL_WORDS      3    /* words of a line ending compared by sound */
#define LYR_PHON_WORDS      1000 /* distinct words sent to espeak-ng per call */
#define LYR_PHON_WORD_CP    40   /* longer words keep their spelling rules */
#define LYR_PHON_PER_WORD   16   /* phones kept per word (its end) */

enum { SC_NONE, SC_LATIN, SC_CYRILLIC, SC_OTHER };

/* ---- UTF-8 ------------------------------------------------------------- */

/* Decode the code point at s[*i] (the text is already validated). */
static uint32_t u8_next(const unsigned char *s, size_t *i)
{
	uint32_t c = s[*i];
	if (c < 0x80) {
		*i += 1;
		return c;
	}
	if (c < 0xe0) {
		c = ((c & 0x1f) << 6) | (s[*i + 1] & 0x3f);
		*i += 2;
		return c;
	}
	if (c < 0xf0) {
		c = ((c & 0x0f) << 12) | ((uint32_t)(s[*i + 1] & 0x3f) << 6) | (s[*i + 2] & 0x3f);
		*i += 3;
		return c;
	}
	c = ((c & 0x07) << 18) | ((uint32_t)(s[*i + 1] & 0x3f) << 12) |
	    ((uint32_t)(s[*i + 2] & 0x3f) << 6) | (s[*i + 3] & 0x3f);
	*i += 4;
	return c;
}

static size_t u8_put(char *dst, uint32_t c)
{
	unsigned char *d = (unsigned char *)dst;
	if (c < 0x80) {
		d[0] = (unsigned char)c;
		return 1;
	}
	if (c < 0x800) {
		d[0] = (unsigned char)(0xc0 | (c >> 6));
		d[1] = (unsigned char)(0x80 | (c & 0x3f));
		return 2;
	}
	if (c < 0x10000) {
		d[0] = (unsigned char)(0xe0 | (c >> 12));
		d[1] = (unsigned char)(0x80 | ((c >> 6) & 0x3f));
		d[2] = (unsigned char)(0x80 | (c & 0x3f));
		return 3;
	}
	d[0] = (unsigned char)(0xf0 | (c >> 18));
	d[1] = (unsigned char)(0x80 | ((c >> 12) & 0x3f));
	d[2] = (unsigned char)(0x80 | ((c >> 6) & 0x3f));
	d[3] = (unsigned char)(0x80 | (c & 0x3f));
	return 4;
}

/* Offset of the first byte that breaks UTF-8, for the error message. Only
 * called once aiq__utf8_valid() said no, so it always finds one. */
static size_t u8_bad_offset(const unsigned char *s, size_t len)
{
	size_t i = 0;
	while (i < len) {
		unsigned char c = s[i];
		size_t n;
		uint32_t cp, min;
		if (c < 0x80) {
			i++;
			continue;
		} else if ((c & 0xe0) == 0xc0) {
			n = 1, cp = c & 0x1f, min = 0x80;
		} else if ((c & 0xf0) == 0xe0) {
			n = 2, cp = c & 0x0f, min = 0x800;
		} else if ((c & 0xf8) == 0xf0) {
			n = 3, cp = c & 0x07, min = 0x10000;
		} else {
			return i;
		}
		if (n >= len - i)
			return i;
		for (size_t k = 1; k <= n; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return i;
			cp = (cp << 6) | (s[i + k] & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return i;
		i += n + 1;
	}
	return len;
}

/* ---- characters -------------------------------------------------------- */

/* Script of a letter, or SC_NONE for anything that is not part of a word. */
static int letter_script(uint32_t c)
{
	static const uint32_t other[][2] = {
	        {0x0386, 0x0386}, {0x0388, 0x03f5}, {0x03f7, 0x03ff}, /* Greek */
	        {0x0531, 0x0556}, {0x0561, 0x0587},                   /* Armenian */
	        {0x05d0, 0x05ea},                                     /* Hebrew */
	        {0x0620, 0x064a},                                     /* Arabic */
	        {0x0900, 0x0963},                                     /* Devanagari */
	        {0x10a0, 0x10ff},                                     /* Georgian */
	        {0x1f00, 0x1fbc},                                     /* Greek Extended */
	        {0x3041, 0x3096}, {0x30a1, 0x30fa},                   /* kana */
	        {0x4e00, 0x9fff},                                     /* CJK ideographs */
	        {0xac00, 0xd7a3},                                     /* Hangul */
	};
	if (c < 0x80)
		return ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') ? SC_LATIN : SC_NONE;
	if (c < 0xc0)
		return SC_NONE;
	if (c <= 0x24f)
		return (c == 0xd7 || c == 0xf7) ? SC_NONE : SC_LATIN;
	if (c >= 0x1e00 && c <= 0x1eff)
		return SC_LATIN;
	if (c >= 0x400 && c <= 0x52f)
		return (c >= 0x482 && c <= 0x489) ? SC_NONE : SC_CYRILLIC;
	for (size_t k = 0; k < sizeof other / sizeof other[0]; k++)
		if (c >= other[k][0] && c <= other[k][1])
			return SC_OTHER;
	return SC_NONE;
}

static bool is_apostrophe(uint32_t c)
{
	return c == 0x27 || c == 0x2019 || c == 0x2bc;
}

#ifndef AIQ_HAVE_UTF8PROC
/* Combining diacritics (U+0300..U+036F), such as the stress mark U+0301 in
 * "за́мок": kept inside a word's span but dropped from its normalized form. */
static bool is_combining(uint32_t c)
{
	return c >= 0x300 && c <= 0x36f;
}
#endif

/* Lowercase without locales (ASCII, Latin-1, Latin Extended-A, Greek,
 * Cyrillic) and write ё as е. Never lengthens the UTF-8 encoding. */
static uint32_t fold(uint32_t c)
{
	if (c < 0x80)
		return (c >= 'A' && c <= 'Z') ? c + 0x20 : c;
	if (c >= 0xc0 && c <= 0xde && c != 0xd7)
		return c + 0x20;
	if (c >= 0x100 && c <= 0x17f) {
		if (c == 0x130)
			return 'i';
		if (c == 0x178)
			return 0xff;
		if ((c <= 0x137 || (c >= 0x14a && c <= 0x177)) && !(c & 1))
			return c + 1;
		if (((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17e)) && (c & 1))
			return c + 1;
		return c;
	}
	if (c >= 0x391 && c <= 0x3ab && c != 0x3a2)
		return c + 0x20;
	if (c == 0x386)
		return 0x3ac;
	if (c >= 0x388 && c <= 0x38a)
		return c + 0x25;
	if (c == 0x38c)
		return 0x3cc;
	if (c == 0x38e || c == 0x38f)
		return c + 0x3f;
	if (c >= 0x400 && c <= 0x40f)
		c += 0x50;
	else if (c >= 0x410 && c <= 0x42f)
		c += 0x20;
	else if ((((c >= 0x460 && c <= 0x481) || (c >= 0x48a && c <= 0x4bf) ||
	           (c >= 0x4d0 && c <= 0x52f)) &&
	          !(c & 1)) ||
	         (c >= 0x4c1 && c <= 0x4ce && (c & 1))) /* pairs of opposite parity */
		c += 1;
	else if (c == 0x4c0)
		c = 0x4cf;
	return c == 0x451 ? 0x435 : c; /* ё → е */
}

/* The classes the tokenizer uses: with utf8proc, a letter is any code point
 * of category L (its script by the ranges above, else "other") and a mark
 * any of category M; without it, the tables above. */
static int char_script(uint32_t c)
{
#ifdef AIQ_HAVE_UTF8PROC
	if (c < 0x80)
		return letter_script(c); /* the same answer, without the lookup */
	if (is_apostrophe(c) || c > 0x10ffff)
		return SC_NONE;
	utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
	if (k < UTF8PROC_CATEGORY_LU || k > UTF8PROC_CATEGORY_LO)
		return SC_NONE;
	int sc = letter_script(c);
	return sc == SC_NONE ? SC_OTHER : sc;
#else
	return letter_script(c);
#endif
}

static bool char_mark(uint32_t c)
{
#ifdef AIQ_HAVE_UTF8PROC
	if (c < 0x80 || c > 0x10ffff)
		return false;
	utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
	return k >= UTF8PROC_CATEGORY_MN && k <= UTF8PROC_CATEGORY_ME;
#else
	return is_combining(c);
#endif
}

/* English vowel letters (y handled by the caller), with Latin-1 accents. */
static bool latin_vowel(uint32_t c)
{
	switch (c) {
	case 'a':
	case 'e':
	case 'i':
	case 'o':
	case 'u': return true;
	default: break;
	}
	return (c >= 0xe0 && c <= 0xe6) || (c >= 0xe8 && c <= 0xef) || (c >= 0xf2 && c <= 0xf6) ||
	       (c >= 0xf8 && c <= 0xfd) || c == 0xff;
}

/* а е и о у ы э ю я (ё is already е) and the Ukrainian і ї є. */
static bool cyrillic_vowel(uint32_t c)
{
	switch (c) {
	case 0x430:
	case 0x435:
	case 0x438:
	case 0x43e:
	case 0x443:
	case 0x44b:
	case 0x44d:
	case 0x44e:
	case 0x44f:
	case 0x454:
	case 0x456:
	case 0x457: return true;
	default: return false;
	}
}

/* ---- hashing ----------------------------------------------------------- */

/* SipHash-1-3 with a per-call random key: counts go through hash tables, and
 * a keyed hash keeps crafted input from forcing collisions. Output never
 * depends on the key, since everything listed is sorted by content. */
#define SIP_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIP_ROUND                                                                                  \
	do {                                                                                       \
		v0 += v1;                                                                          \
		v1 = SIP_ROTL(v1, 13);                                                             \
		v1 ^= v0;                                                                          \
		v0 = SIP_ROTL(v0, 32);                                                             \
		v2 += v3;                                                                          \
		v3 = SIP_ROTL(v3, 16);                                                             \
		v3 ^= v2;                                                                          \
		v0 += v3;                                                                          \
		v3 = SIP_ROTL(v3, 21);                                                             \
		v3 ^= v0;                                                                          \
		v2 += v1;                                                                          \
		v1 = SIP_ROTL(v1, 17);                                                             \
		v1 ^= v2;                                                                          \
		v2 = SIP_ROTL(v2, 32);                                                             \
	} while (0)

static uint64_t siphash13(const void *data, size_t len, const uint64_t key[2])
{
	const unsigned char *p = data;
	uint64_t v0 = key[0] ^ 0x736f6d6570736575ULL;
	uint64_t v1 = key[1] ^ 0x646f72616e646f6dULL;
	uint64_t v2 = key[0] ^ 0x6c7967656e657261ULL;
	uint64_t v3 = key[1] ^ 0x7465646279746573ULL;
	size_t tail = len & 7;
	const unsigned char *end = p + (len - tail);
	for (; p != end; p += 8) {
		uint64_t m = 0;
		for (int k = 7; k >= 0; k--)
			m = (m << 8) | p[k];
		v3 ^= m;
		SIP_ROUND;
		v0 ^= m;
	}
	uint64_t b = (uint64_t)len << 56;
	for (size_t k = tail; k > 0; k--)
		b |= (uint64_t)p[k - 1] << (8 * (k - 1));
	v3 ^= b;
	SIP_ROUND;
	v0 ^= b;
	v2 ^= 0xff;
	SIP_ROUND;
	SIP_ROUND;
	SIP_ROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

/* Open-addressing table from byte strings (owned elsewhere) to an index. */
typedef struct {
	const char *key; /* NULL: empty slot */
	uint64_t hash;
	uint32_t len;
	uint32_t val;
} hslot;

typedef struct {
	hslot *slots;
	size_t mask;
	size_t used;
} htab;

static int ht_init(htab *t)
{
	t->slots = calloc(64, sizeof *t->slots);
	t->mask = 63;
	t->used = 0;
	return t->slots ? 0 : -1;
}

static hslot *ht_probe(hslot *slots, size_t mask, const char *key, uint32_t len, uint64_t h)
{
	for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
		hslot *s = &slots[i];
		if (s->key == NULL ||
		    (s->hash == h && s->len == len && memcmp(s->key, key, len) == 0))
			return s;
	}
}

/* The slot for `key`: a filled one when present, otherwise an empty one that
 * the caller must fill (key, hash, len, val). NULL when out of memory. */
static hslot *ht_lookup(htab *t, const char *key, uint32_t len, uint64_t h)
{
	if ((t->used + 1) * 2 > t->mask + 1) {
		size_t cap = (t->mask + 1) * 2;
		hslot *n = calloc(cap, sizeof *n);
		if (n == NULL)
			return NULL;
		for (size_t i = 0; i <= t->mask; i++)
			if (t->slots[i].key)
				*ht_probe(n, cap - 1, t->slots[i].key, t->slots[i].len,
				          t->slots[i].hash) = t->slots[i];
		free(t->slots);
		t->slots = n;
		t->mask = cap - 1;
	}
	return ht_probe(t->slots, t->mask, key, len, h);
}

/* Grow a vector so that it holds at least `need` elements. */
static int vec_reserve(void **p, size_t *cap, size_t need, size_t elsize)
{
	if (need <= *cap)
		return 0;
	size_t n = *cap ? *cap * 2 : 64;
	while (n < need)
		n *= 2;
	void *q = realloc(*p, n * elsize);
	if (q == NULL)
		return -1;
	*p = q;
	*cap = n;
	return 0;
}

/* ---- analysis state ---------------------------------------------------- */

enum { WF_CONTENT = 1, WF_NEGATOR = 2 };

enum { VOICE_NONE = -1, VOICE_LINE = -2, VOICE_EN = 0, VOICE_RU = 1 };

typedef struct {
	uint32_t off, len; /* normalized form in the word arena */
	uint32_t count;
	uint32_t syllables;
	uint32_t rhyme;              /* spelling rhyme key id */
	uint32_t stem;               /* stem id (the word's own id without a stemmer) */
	uint32_t stem_off, stem_len; /* its text in c->sarena (with a stemmer) */
	uint32_t ph_off;             /* phones in c->phv */
	unsigned char ph_n;
	signed char voice; /* VOICE_*: which espeak-ng voice reads it */
	signed char polarity;
	unsigned char flags;
} word_info;

typedef struct {
	uint32_t off, len; /* normalized line text in the word arena */
	uint32_t stanza;
	uint32_t rhyme;     /* spelling rhyme key of the last word */
	uint32_t occ, nocc; /* its words in c->occ */
	uint32_t cls;       /* rhyme class in its stanza (scheme letter) */
} line_info;

typedef struct {
	uint32_t count;
	uint32_t first; /* index of the line where it first appears */
} hook_info;

typedef struct {
	uint32_t stanza; /* stanza whose letter `letter` is, or LYR_NO_ID */
	char letter;
	unsigned char kcp; /* code points of the key, at most 255 */
} rhyme_info;

typedef struct {
	uint64_t key[2];

	/* Normalized words, space-separated per line; never longer than the text. */
	char *arena;
	size_t apos;
	/* Rhyme keys, also bounded by the text length. */
	char *rarena;
	size_t rpos;

	uint32_t *cps; /* scratch: one word's code points */
	size_t cps_cap, cps_n;
#ifdef AIQ_HAVE_UTF8PROC
	int32_t *ucs; /* scratch: a word decomposed by utf8proc */
	size_t ucs_cap;
#endif
	uint32_t *occ; /* word id of every word, in text order */
	size_t occ_n, occ_cap;
#ifdef AIQ_HAVE_ESPEAK
	aiq__phone *phv; /* LYR_PHON_PER_WORD at most per distinct word */
	size_t phv_n, phv_cap;
#endif
	bool phonemes; /* espeak-ng read the words */
#ifdef AIQ_HAVE_STEMMER
	struct sb_stemmer *stemmer[2]; /* english, russian; made on first use */
	char *sarena;                  /* stems, each at most its word's length */
	size_t spos;
	char *harena; /* lines as stems, the keys of c->hooks */
	size_t hpos;
	htab stems;
	uint32_t stem_n;
#endif

	htab words, hooks, rhymes;
	word_info *wv;
	size_t wv_cap;
	line_info *lv;
	size_t lv_n, lv_cap;
	hook_info *hv;
	size_t hv_n, hv_cap;
	rhyme_info *rv;
	size_t rv_n, rv_cap;

	uint64_t word_count, syllable_count, char_count;
	uint64_t letters[4]; /* by script */
	uint32_t stanza_count;
	bool in_stanza;

	uint64_t positive, negative, negated;
	int neg_left; /* words still reached by the last negator */
} lyr_ctx;

static void ctx_free(lyr_ctx *c)
{
	free(c->arena);
	free(c->rarena);
	free(c->cps);
#ifdef AIQ_HAVE_UTF8PROC
	free(c->ucs);
#endif
	free(c->occ);
#ifdef AIQ_HAVE_ESPEAK
	free(c->phv);
#endif
#ifdef AIQ_HAVE_STEMMER
	for (int k = 0; k < 2; k++)
		if (c->stemmer[k])
			sb_stemmer_delete(c->stemmer[k]);
	free(c->sarena);
	free(c->harena);
	free(c->stems.slots);
#endif
	free(c->words.slots);
	free(c->hooks.slots);
	free(c->rhymes.slots);
	free(c->wv);
	free(c->lv);
	free(c->hv);
	free(c->rv);
}

/* ---- word lists -------------------------------------------------------- */

static int cmp_cstr(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static bool in_list(const char *const *list, size_t n, const char *w)
{
	return bsearch(&w, list, n, sizeof *list, cmp_cstr) != NULL;
}

static int cmp_sentiment(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, ((const struct aiq__lyrics_sentiment *)b)->word);
}

/* Polarity of a word: the longest lexicon entry that equals it, or that is
 * a stem and begins it. `w` is NUL-terminated, `len` bytes. */
static int sentiment_of(char *w, size_t len)
{
	size_t n = sizeof aiq__lyrics_sentiment_words / sizeof aiq__lyrics_sentiment_words[0];
	for (size_t l = len; l >= 2; l--) {
		if (l < len && (w[l] & 0xc0) == 0x80)
			continue; /* not a code point boundary */
		char saved = w[l];
		w[l] = '\0';
		const char *key = w;
		const struct aiq__lyrics_sentiment *e =
		        bsearch(&key, aiq__lyrics_sentiment_words, n, sizeof *e, cmp_sentiment);
		w[l] = saved;
		if (e && (e->stem || l == len))
			return e->polarity;
	}
	return 0;
}

/* Flags and polarity of a new word; `w` is NUL-terminated. */
static void classify_word(word_info *wi, char *w, size_t len, size_t ncp)
{
	size_t nstop = sizeof aiq__lyrics_stop_words / sizeof aiq__lyrics_stop_words[0];
	size_t nneg = sizeof aiq__lyrics_negators / sizeof aiq__lyrics_negators[0];
	wi->flags = 0;
	wi->polarity = 0;
	if (ncp >= 2 && !in_list(aiq__lyrics_stop_words, nstop, w))
		wi->flags |= WF_CONTENT;
	if (in_list(aiq__lyrics_negators, nneg, w) ||
	    (len > 3 && memcmp(w + len - 3, "n't", 3) == 0))
		wi->flags |= WF_NEGATOR;
	else
		wi->polarity = (signed char)sentiment_of(w, len);
}

/* ---- syllables and rhyme keys ------------------------------------------ */

/* English: vowel groups (a e i o u, y except word-initial; a y followed by
 * i or o closes its group, so crying and beyond get two), minus a silent
 * final e / es / ed, at least 1. Also sets *rstart, where the rhyme key
 * begins: the last vowel group, or the one before when the last is silent. */
static uint32_t english_word(const uint32_t *w, size_t n, size_t *rstart)
{
#define ISV(i) ((w[i] == 'y' && (i) > 0) || latin_vowel(w[i]))
	size_t groups = 0, last = 0, prev = 0, last_end = 0;
	for (size_t i = 0; i < n; i++) {
		if (!ISV(i))
			continue;
		bool starts = i == 0 || !ISV(i - 1) ||
		              (w[i - 1] == 'y' && i - 1 > 0 && (w[i] == 'i' || w[i] == 'o'));
		if (starts) {
			groups++;
			prev = last;
			last = i;
		}
		last_end = i + 1;
	}
	if (groups == 0) {
		*rstart = 0;
		return 1;
	}
	bool silent = false;
	if (groups >= 2 && last_end - last == 1 && w[last] == 'e') {
		size_t e = last, tail = n - e - 1;
		uint32_t p = w[e - 1]; /* a consonant: the group is a lone e */
		bool cons_le = p == 'l' && e >= 2 && !ISV(e - 2); /* table, tables, tangled */
		if (tail == 0)
			silent = !cons_le;
		else if (tail == 1 && w[n - 1] == 's')
			silent = !cons_le && p != 's' && p != 'x' && p != 'z' && p != 'c' &&
			         p != 'g' &&
			         !(p == 'h' && e >= 2 && (w[e - 2] == 'c' || w[e - 2] == 's'));
		else if (tail == 1 && w[n - 1] == 'd')
			silent = !cons_le && p != 't' && p != 'd';
	}
#undef ISV
	*rstart = silent ? prev : last;
	return (uint32_t)(groups - silent);
}

/* Whether espeak-ng reads every letter of a normalized word itself: ASCII,
 * Latin-1 and Latin Extended-A letters, and basic Cyrillic. It spells other
 * letters by their names (ạ: "a with dot below"), and a letter of a third
 * script (Armenian inside a Latin word) makes espeak-ng 1.51 switch
 * translators and read freed memory (a fuzz regression). */
static bool espeak_reads(const uint32_t *w, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint32_t c = w[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 0xdf && c <= 0x17f && c != 0xf7) ||
		      (c >= 0x430 && c <= 0x45f)))
			return false;
	}
	return true;
}

/* Whether an English word has a vowel letter (y counts anywhere). */
static bool english_has_vowel(const uint32_t *w, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (w[i] == 'y' || latin_vowel(w[i]))
			return true;
	return false;
}

/* Russian: one syllable per vowel. The rhyme key runs from the last vowel
 * to the end; a word ending in a vowel also takes the letter before it, so
 * мама/рама rhyme and мама/она do not. */
static uint32_t russian_word(const uint32_t *w, size_t n, size_t *rstart)
{
	uint32_t vowels = 0;
	size_t last = n;
	for (size_t i = 0; i < n; i++)
		if (cyrillic_vowel(w[i])) {
			vowels++;
			last = i;
		}
	if (vowels == 0)
		*rstart = 0;
	else if (last == n - 1 && n >= 2)
		*rstart = n - 2;
	else
		*rstart = last;
	return vowels;
}

/* Syllables and rhyme key of a new word. */
static int measure_word(lyr_ctx *c, word_info *wi, int script)
{
	const unsigned char *s = (const unsigned char *)c->arena + wi->off;
	if (vec_reserve((void **)&c->cps, &c->cps_cap, wi->len, sizeof *c->cps))
		return AIQ_ENOMEM;
	size_t n = 0;
	for (size_t i = 0; i < wi->len;) {
		uint32_t cp = u8_next(s, &i);
		if (cp != '\'')
			c->cps[n++] = cp;
	}
	c->cps_n = n;
	size_t rstart;
	if (script == SC_CYRILLIC) {
		wi->syllables = russian_word(c->cps, n, &rstart);
	} else if (script == SC_LATIN) {
		wi->syllables = english_word(c->cps, n, &rstart);
	} else {
		wi->syllables = 1;
		rstart = n > 2 ? n - 2 : 0;
	}

	char *k = c->rarena + c->rpos;
	size_t klen = 0;
	for (size_t i = rstart; i < n; i++) {
		uint32_t cp = c->cps[i];
		if (script == SC_LATIN && cp == 'y')
			cp = 'i'; /* time / rhyme, day / away */
		klen += u8_put(k + klen, cp);
	}
	uint64_t h = siphash13(k, klen, c->key);
	hslot *sl = ht_lookup(&c->rhymes, k, (uint32_t)klen, h);
	if (sl == NULL)
		/* k points into c->rarena, which ctx_free() releases; the analyzer
		 * loses that when the table grows (ht_lookup). */
		return AIQ_ENOMEM; /* NOLINT(clang-analyzer-unix.Malloc) */
	if (sl->key == NULL) {
		if (vec_reserve((void **)&c->rv, &c->rv_cap, c->rv_n + 1, sizeof *c->rv))
			return AIQ_ENOMEM;
		c->rv[c->rv_n] = (rhyme_info){LYR_NO_ID, 0,
		                              (unsigned char)(n - rstart < 255 ? n - rstart : 255)};
		*sl = (hslot){k, h, (uint32_t)klen, (uint32_t)c->rv_n++};
		c->rpos += klen;
		c->rhymes.used++;
	}
	wi->rhyme = sl->val;
	return AIQ_OK;
}

/* ---- normalizing ------------------------------------------------------- */

/* Append one code point of a word's normalized form: marks dropped, every
 * apostrophe as U+0027, ё as е. */
static size_t put_norm(char *dst, uint32_t cp)
{
	if (char_mark(cp))
		return 0;
	if (is_apostrophe(cp))
		cp = '\'';
	else if (cp == 0x451)
		cp = 0x435;
	return u8_put(dst, cp);
}

/* Write the normalized form of the word t[ts, te) at c->apos. With utf8proc:
 * NFKC with full case folding; a form longer than the word's own bytes (a
 * few compatibility characters expand) and builds without utf8proc use the
 * per-letter tables, which never lengthen, so the arena bound holds. */
static int emit_word(lyr_ctx *c, const unsigned char *t, size_t ts, size_t te)
{
#ifdef AIQ_HAVE_UTF8PROC
	bool ascii = true;
	for (size_t i = ts; i < te && ascii; i++)
		ascii = t[i] < 0x80;
	if (ascii) { /* NFKC with case folding is plain lowercasing here */
		for (size_t i = ts; i < te; i++)
			c->arena[c->apos++] =
			        (char)(t[i] >= 'A' && t[i] <= 'Z' ? t[i] + 0x20 : t[i]);
		return AIQ_OK;
	}
	const utf8proc_option_t opt =
	        UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT | UTF8PROC_CASEFOLD;
	utf8proc_ssize_t n =
	        utf8proc_decompose(t + ts, (utf8proc_ssize_t)(te - ts), (utf8proc_int32_t *)c->ucs,
	                           (utf8proc_ssize_t)c->ucs_cap, opt);
	if (n > (utf8proc_ssize_t)c->ucs_cap) {
		if (vec_reserve((void **)&c->ucs, &c->ucs_cap, (size_t)n, sizeof *c->ucs))
			return AIQ_ENOMEM;
		n = utf8proc_decompose(t + ts, (utf8proc_ssize_t)(te - ts),
		                       (utf8proc_int32_t *)c->ucs, (utf8proc_ssize_t)c->ucs_cap,
		                       opt);
	}
	if (n >= 0 && n <= (utf8proc_ssize_t)c->ucs_cap)
		n = utf8proc_normalize_utf32((utf8proc_int32_t *)c->ucs, n, opt);
	if (n >= 0 && n <= (utf8proc_ssize_t)c->ucs_cap) {
		size_t bytes = 0;
		char tmp[4];
		for (utf8proc_ssize_t k = 0; k < n; k++)
			bytes += put_norm(tmp, (uint32_t)c->ucs[k]);
		if (bytes <= te - ts) {
			for (utf8proc_ssize_t k = 0; k < n; k++)
				c->apos += put_norm(c->arena + c->apos, (uint32_t)c->ucs[k]);
			return AIQ_OK;
		}
	}
#endif
	for (size_t i = ts; i < te;) {
		uint32_t cp = u8_next(t, &i);
		c->apos += put_norm(c->arena + c->apos, is_apostrophe(cp) ? cp : fold(cp));
	}
	return AIQ_OK;
}

/* ---- stems ------------------------------------------------------------- */

#ifdef AIQ_HAVE_STEMMER
/* The Snowball stem of a new word (Cyrillic: russian, Latin: english),
 * interned in c->stems. A word in another script, or whose stem would be
 * longer than itself, is its own stem. */
static int stem_word(lyr_ctx *c, word_info *wi, int script)
{
	const char *w = c->arena + wi->off;
	const char *st = w;
	size_t sl = wi->len;
	int k = script == SC_CYRILLIC ? 1 : script == SC_LATIN ? 0 : -1;
	if (k >= 0 && c->stemmer[k] == NULL)
		c->stemmer[k] = sb_stemmer_new(k ? "russian" : "english", "UTF_8");
	if (k >= 0 && c->stemmer[k] != NULL) {
		const sb_symbol *r =
		        sb_stemmer_stem(c->stemmer[k], (const sb_symbol *)w, (int)wi->len);
		int rl = r ? sb_stemmer_length(c->stemmer[k]) : -1;
		if (r != NULL && rl > 0 && (size_t)rl <= wi->len) {
			st = (const char *)r;
			sl = (size_t)rl;
		}
	}
	char *dst = c->sarena + c->spos;
	memcpy(dst, st, sl);
	uint64_t h = siphash13(dst, sl, c->key);
	hslot *slot = ht_lookup(&c->stems, dst, (uint32_t)sl, h);
	if (slot == NULL)
		return AIQ_ENOMEM; /* NOLINT(clang-analyzer-unix.Malloc): as in measure_word() */
	if (slot->key == NULL) {
		*slot = (hslot){dst, h, (uint32_t)sl, c->stem_n++};
		c->spos += sl;
		c->stems.used++;
	}
	wi->stem = slot->val;
	wi->stem_off = (uint32_t)(slot->key - c->sarena);
	wi->stem_len = slot->len;
	return AIQ_OK;
}
#endif

/* ---- tokenizing -------------------------------------------------------- */

/* A word ended at c->apos, starting at `start`. Returns its index. */
static int finish_word(lyr_ctx *c, size_t start, int scripts, size_t ncp, uint32_t *index)
{
	uint32_t len = (uint32_t)(c->apos - start);
	const char *w = c->arena + start;
	uint64_t h = siphash13(w, len, c->key);
	hslot *sl = ht_lookup(&c->words, w, len, h);
	if (sl == NULL)
		return AIQ_ENOMEM; /* NOLINT(clang-analyzer-unix.Malloc): as in measure_word() */
	if (vec_reserve((void **)&c->occ, &c->occ_cap, c->occ_n + 1, sizeof *c->occ))
		return AIQ_ENOMEM;
	if (sl->key == NULL) {
		uint32_t id = (uint32_t)c->words.used;
		if (vec_reserve((void **)&c->wv, &c->wv_cap, (size_t)id + 1, sizeof *c->wv))
			return AIQ_ENOMEM;
		word_info *wi = &c->wv[id];
		*wi = (word_info){.off = (uint32_t)start, .len = len, .stem = id};
		/* The arena has room for one more byte past any word (see the
		 * size argument in analyze()), and the next write overwrites it. */
		c->arena[c->apos] = '\0';
		classify_word(wi, c->arena + start, len, ncp);
		int script = (scripts & (1 << SC_CYRILLIC)) ? SC_CYRILLIC
		             : (scripts & (1 << SC_LATIN))  ? SC_LATIN
		                                            : SC_OTHER;
		/* A word in one script has that script's voice; a word mixing
		 * Latin and Cyrillic letters takes its line's (process_line). */
		int mixed = (scripts & (1 << SC_CYRILLIC)) && (scripts & (1 << SC_LATIN));
		wi->voice = (signed char)(mixed                   ? VOICE_LINE
		                          : script == SC_CYRILLIC ? VOICE_RU
		                          : script == SC_LATIN    ? VOICE_EN
		                                                  : VOICE_NONE);
		if (ncp > LYR_PHON_WORD_CP)
			wi->voice = VOICE_NONE;
		*sl = (hslot){w, h, len, id};
		c->words.used++;
		int rc = measure_word(c, wi, script);
#ifdef AIQ_HAVE_STEMMER
		if (rc == AIQ_OK)
			rc = stem_word(c, wi, script);
#endif
		if (rc)
			return rc;
		if (wi->syllables == 0 ||
		    (script == SC_LATIN && !english_has_vowel(c->cps, c->cps_n)) ||
		    !espeak_reads(c->cps, c->cps_n))
			wi->voice = VOICE_NONE; /* в, hmm: espeak-ng would spell the letters */
	}
	/* A word in the table has its entry in c->wv (added together above). */
	word_info *wi = &c->wv[sl->val];
	wi->count++; /* NOLINT(clang-analyzer-core.NullDereference) */
	c->occ[c->occ_n++] = sl->val;
	c->word_count++;
	c->syllable_count += wi->syllables;

	if (wi->flags & WF_NEGATOR) {
		c->neg_left = LYR_NEGATION_SCOPE;
	} else if (wi->polarity != 0) {
		int pol = wi->polarity > 0 ? 1 : -1; /* -1 or +1; 0 is handled above */
		if (c->neg_left > 0) {
			pol = -pol;
			c->negated++;
			c->neg_left = 0;
		}
		if (pol > 0)
			c->positive++;
		else
			c->negative++;
	} else if (c->neg_left > 0) {
		c->neg_left--;
	}
	*index = sl->val;
	return AIQ_OK;
}

static bool ascii_space(unsigned char b)
{
	return b == ' ' || b == '\t' || b == '\v' || b == '\f';
}

/* The word t[ts, te) ends: normalize it and count it. */
static int end_word(lyr_ctx *c, const unsigned char *t, size_t ts, size_t te, size_t wstart,
                    int scripts, size_t ncp, uint32_t *last)
{
	int rc = emit_word(c, t, ts, te);
	if (rc == AIQ_OK)
		rc = finish_word(c, wstart, scripts, ncp, last);
	return rc;
}

/* The key a line is counted by as a hook: its normalized text, or with a
 * stemmer its words' stems, so "I'm loving you" and "I'm loved you" merge. */
static void hook_key(lyr_ctx *c, const line_info *l, const char **key, uint32_t *klen)
{
#ifdef AIQ_HAVE_STEMMER
	/* Stems are never longer than their words: the key fits in the
	 * line's normalized length, and only a new hook keeps its bytes. */
	char *k = c->harena + c->hpos;
	size_t n = 0;
	for (uint32_t i = 0; i < l->nocc; i++) {
		const word_info *w = &c->wv[c->occ[l->occ + i]];
		if (i)
			k[n++] = ' ';
		memcpy(k + n, c->sarena + w->stem_off, w->stem_len);
		n += w->stem_len;
	}
	*key = k;
	*klen = (uint32_t)n;
#else
	*key = c->arena + l->off;
	*klen = l->len;
#endif
}

/* One line of text, [ls, le), without its line break. */
static int process_line(lyr_ctx *c, const unsigned char *t, size_t ls, size_t le)
{
	size_t ts = ls, te = le;
	while (ts < te && ascii_space(t[ts]))
		ts++;
	while (te > ts && ascii_space(t[te - 1]))
		te--;
	if (ts == te || (t[ts] == '[' && t[te - 1] == ']')) {
		c->in_stanza = false; /* blank line or section label such as [Chorus] */
		return AIQ_OK;
	}

	size_t line_off = c->apos, occ0 = c->occ_n;
	uint64_t lat0 = c->letters[SC_LATIN], cyr0 = c->letters[SC_CYRILLIC];
	uint32_t nwords = 0, last = LYR_NO_ID;
	bool in_word = false;
	size_t wstart = 0, tstart = 0, ncp = 0;
	int scripts = 0, rc;
	c->neg_left = 0;
	for (size_t p = ls; p < le;) {
		size_t q = p;
		uint32_t cp = u8_next(t, &q);
		int sc = char_script(cp);
		if (sc != SC_NONE) {
			if (!in_word) {
				if (nwords > 0)
					c->arena[c->apos++] = ' ';
				wstart = c->apos;
				tstart = p;
				in_word = true;
				scripts = 0;
				ncp = 0;
			}
			scripts |= 1 << sc;
			ncp++;
			c->letters[sc]++;
		} else if (in_word && char_mark(cp)) {
			/* part of the word, not of its normalized form */
		} else if (in_word && is_apostrophe(cp) && q < le) {
			size_t r = q;
			if (char_script(u8_next(t, &r)) != SC_NONE) {
				ncp++;
			} else {
				if ((rc = end_word(c, t, tstart, p, wstart, scripts, ncp, &last)))
					return rc;
				nwords++;
				in_word = false;
			}
		} else if (in_word) {
			if ((rc = end_word(c, t, tstart, p, wstart, scripts, ncp, &last)))
				return rc;
			nwords++;
			in_word = false;
		}
		p = q;
	}
	if (in_word) {
		if ((rc = end_word(c, t, tstart, le, wstart, scripts, ncp, &last)))
			return rc;
		nwords++;
	}
	if (nwords == 0) {
		c->in_stanza = false; /* punctuation only: "...", "* * *" */
		return AIQ_OK;
	}
	if (!c->in_stanza) {
		c->in_stanza = true;
		c->stanza_count++;
	}

	/* Words that mix Latin and Cyrillic letters take the voice of the
	 * line's majority script (Cyrillic on a tie). */
	bool latin = c->letters[SC_LATIN] - lat0 > c->letters[SC_CYRILLIC] - cyr0;
	for (size_t i = occ0; i < c->occ_n; i++)
		if (c->wv[c->occ[i]].voice == VOICE_LINE)
			c->wv[c->occ[i]].voice = latin ? VOICE_EN : VOICE_RU;

	uint32_t llen = (uint32_t)(c->apos - line_off);
	if (vec_reserve((void **)&c->lv, &c->lv_cap, c->lv_n + 1, sizeof *c->lv))
		return AIQ_ENOMEM;
	line_info *l = &c->lv[c->lv_n];
	*l = (line_info){.off = (uint32_t)line_off,
	                 .len = llen,
	                 .stanza = c->stanza_count - 1,
	                 .rhyme = c->wv[last].rhyme,
	                 .occ = (uint32_t)occ0,
	                 .nocc = (uint32_t)(c->occ_n - occ0)};

	const char *lt;
	uint32_t klen;
	hook_key(c, l, &lt, &klen);
	/* c->lv, grown above, is freed with the context (as in measure_word()). */
	// NOLINTNEXTLINE(clang-analyzer-unix.Malloc)
	uint64_t h = siphash13(lt, klen, c->key);
	hslot *sl = ht_lookup(&c->hooks, lt, klen, h);
	if (sl == NULL)
		return AIQ_ENOMEM;
	if (sl->key == NULL) {
		if (vec_reserve((void **)&c->hv, &c->hv_cap, c->hv_n + 1, sizeof *c->hv))
			return AIQ_ENOMEM;
		c->hv[c->hv_n] = (hook_info){0, (uint32_t)c->lv_n};
		*sl = (hslot){lt, h, klen, (uint32_t)c->hv_n++};
		c->hooks.used++;
#ifdef AIQ_HAVE_STEMMER
		c->hpos += klen;
#endif
	}
	c->hv[sl->val].count++;
	c->lv_n++;
	return AIQ_OK;
}

/* ---- results ----------------------------------------------------------- */

static double round4(double x)
{
	return round(x * 10000.0) / 10000.0;
}

static double ratio(uint64_t a, uint64_t b)
{
	return b ? round4((double)a / (double)b) : 0.0;
}

/* json_object_set_new that remembers failure, so building reads straight. */
static void put(json_t *o, const char *k, json_t *v, bool *ok)
{
	if (v == NULL || o == NULL || json_object_set_new(o, k, v) != 0)
		*ok = false;
}

static void append(json_t *a, json_t *v, bool *ok)
{
	if (v == NULL || a == NULL || json_array_append_new(a, v) != 0)
		*ok = false;
}

static json_t *count_item(const char *k1, const char *s, size_t len, uint64_t n, bool *ok)
{
	json_t *o = json_object();
	put(o, k1, json_stringn(s, len), ok);
	put(o, "count", json_integer((json_int_t)n), ok);
	if (o == NULL)
		*ok = false;
	return o;
}

/* ---- rhyme by sound ---------------------------------------------------- */

enum { RH_NONE, RH_SLANT, RH_PERFECT }; /* AIQ_RHYME_* of phon.h */

#ifdef AIQ_HAVE_ESPEAK
/* The phones of every distinct word espeak-ng can read (English words
 * first, then Russian ones, which decides which words the LYR_PHON_WORDS
 * cap leaves to the spelling rules); a word's syllables become its vowels. */
static int phon_pass(lyr_ctx *c)
{
	if (!aiq__phon_available())
		return AIQ_OK;
	c->phonemes = true;
	size_t sent = 0;
	for (int v = VOICE_EN; v <= VOICE_RU; v++)
		for (size_t i = 0; i < c->words.used && sent < LYR_PHON_WORDS; i++) {
			word_info *w = &c->wv[i];
			if (w->voice != v)
				continue;
			sent++;
			if (vec_reserve((void **)&c->phv, &c->phv_cap, c->phv_n + LYR_PHON_PER_WORD,
			                sizeof *c->phv))
				return AIQ_ENOMEM;
			/* The byte after a word is a separator or the arena's spare
			 * byte: a NUL there for the call, then put back. */
			char saved = c->arena[w->off + w->len];
			c->arena[w->off + w->len] = '\0';
			size_t n = aiq__phon_word(c->phv + c->phv_n, LYR_PHON_PER_WORD,
			                          c->arena + w->off,
			                          v == VOICE_RU ? AIQ_PHON_RU : AIQ_PHON_EN);
			c->arena[w->off + w->len] = saved;
			size_t syl = aiq__phon_syllables(c->phv + c->phv_n, n);
			if (syl == 0)
				continue; /* nothing usable: the spelling rules stay */
			w->ph_off = (uint32_t)c->phv_n;
			w->ph_n = (unsigned char)n;
			w->syllables = (uint32_t)syl;
			c->phv_n += n;
		}
	c->syllable_count = 0;
	for (size_t i = 0; i < c->words.used; i++)
		c->syllable_count += (uint64_t)c->wv[i].count * c->wv[i].syllables;
	return AIQ_OK;
}
#endif

/* A line's ending by sound: the phones of its last LYR_TAIL_WORDS words
 * (while they have phones). The rhyme starts at the last stressed vowel;
 * a last word of one unstressed vowel (you, it) carries the line's stress,
 * as it does when sung. n is 0 when the last word has no phones. */
typedef struct {
#ifdef AIQ_HAVE_ESPEAK
	aiq__phone p[LYR_TAIL_WORDS * LYR_PHON_PER_WORD];
#endif
	size_t n;
	bool russian; /* its last word is read by the Russian voice */
} line_tail;

static void tail_of(const lyr_ctx *c, const line_info *l, line_tail *t)
{
	t->n = 0;
	t->russian = false;
#ifdef AIQ_HAVE_ESPEAK
	if (!c->phonemes)
		return;
	size_t words = 0;
	while (words < LYR_TAIL_WORDS && words < l->nocc &&
	       c->wv[c->occ[l->occ + l->nocc - 1 - words]].ph_n > 0)
		words++;
	for (size_t k = words; k > 0; k--) {
		const word_info *w = &c->wv[c->occ[l->occ + l->nocc - k]];
		memcpy(t->p + t->n, c->phv + w->ph_off, w->ph_n * sizeof *t->p);
		t->n += w->ph_n;
	}
	if (words > 0) {
		const word_info *w = &c->wv[c->occ[l->occ + l->nocc - 1]];
		aiq__phone *p = t->p + t->n - w->ph_n;
		size_t v = 0, at = 0;
		bool stressed = false;
		for (size_t k = 0; k < w->ph_n; k++)
			if (p[k].vowel) {
				v++;
				at = k;
				stressed |= p[k].stress != 0;
			}
		if (v == 1 && !stressed)
			p[at].stress = 2;
		t->russian = w->voice == VOICE_RU;
	}
#else
	(void)c;
	(void)l;
#endif
}

/* How two lines rhyme (RH_*): by sound when both endings have phones, else
 * by equal spelling keys. *vowels: vowels alike from the end. */
static int lines_rhyme(const lyr_ctx *c, const line_info *a, const line_tail *ta,
                       const line_info *b, const line_tail *tb, int *vowels)
{
#ifdef AIQ_HAVE_ESPEAK
	if (ta->n && tb->n) {
		bool ru = ta->russian && tb->russian;
		int r = aiq__phon_rhyme(ta->p, ta->n, tb->p, tb->n, ru, vowels);
		/* Russian spelling follows sound closely, and espeak-ng guesses
		 * the stress of homographs: equal spelling keys of three letters
		 * or more (плывут / найдут) still make a slant rhyme. */
		if (r == RH_NONE && ru && a->rhyme == b->rhyme && c->rv[a->rhyme].kcp >= 3) {
			*vowels = 1;
			r = RH_SLANT;
		}
		return r;
	}
#else
	(void)c;
	(void)ta;
	(void)tb;
#endif
	*vowels = 1;
	return a->rhyme == b->rhyme ? RH_PERFECT : RH_NONE;
}

/* Two words of a line rhyme internally: distinct content words whose
 * endings are the same, by sound (perfect) or by spelling key. */
static bool words_rhyme(const lyr_ctx *c, uint32_t x, uint32_t y)
{
	const word_info *a = &c->wv[x], *b = &c->wv[y];
	if (x == y || !(a->flags & WF_CONTENT) || !(b->flags & WF_CONTENT))
		return false;
#ifdef AIQ_HAVE_ESPEAK
	if (a->ph_n && b->ph_n) {
		int v;
		return aiq__phon_rhyme(c->phv + a->ph_off, a->ph_n, c->phv + b->ph_off, b->ph_n,
		                       a->voice == VOICE_RU && b->voice == VOICE_RU,
		                       &v) == RH_PERFECT;
	}
#endif
	return a->rhyme == b->rhyme;
}

static uint64_t internal_rhymes(const lyr_ctx *c)
{
	uint64_t n = 0;
	for (size_t i = 0; i < c->lv_n; i++) {
		const line_info *l = &c->lv[i];
		for (uint32_t q = 1; q < l->nocc; q++)
			for (uint32_t p = q; p > 0 && q - p < LYR_INTERNAL_WINDOW; p--)
				if (words_rhyme(c, c->occ[l->occ + p - 1], c->occ[l->occ + q])) {
					n++;
					break;
				}
	}
	return n;
}

/* Also assigns scheme letters and rhyme classes, hence the non-const
 * context. A line's partner is the nearest of the LYR_LOOKBACK lines before
 * it in its stanza that rhymes with it, a perfect rhyme before a slant one;
 * it takes the partner's letter. */
static json_t *rhyme_json(lyr_ctx *c, bool *ok)
{
	static const char letters[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
	uint64_t adjacent = 0, alternating = 0, rhyming = 0, perfect = 0, slant = 0, multis = 0;
	uint32_t next_cls = (uint32_t)c->rv_n; /* classes past the spelling keys' ids */
	json_t *schemes = json_array(), *pairs = json_array();
	char scheme[LYR_SCHEME_LINES + 1];
	line_tail *ring = malloc((LYR_LOOKBACK + 1) * sizeof *ring);
	char *letter = malloc(c->lv_n ? c->lv_n : 1);
	if (ring == NULL || letter == NULL) {
		free(ring);
		free(letter);
		*ok = false;
		json_decref(schemes);
		json_decref(pairs);
		return NULL;
	}
	size_t i = 0;
	while (i < c->lv_n) {
		uint32_t st = c->lv[i].stanza;
		size_t end = i;
		while (end < c->lv_n && c->lv[end].stanza == st)
			end++;
		int next_letter = 0;
		size_t slen = 0;
		for (size_t j = i; j < end; j++) {
			line_info *l = &c->lv[j];
			line_tail *tj = &ring[j % (LYR_LOOKBACK + 1)];
			tail_of(c, l, tj);
			size_t partner = SIZE_MAX;
			int best = RH_NONE, best_v = 0;
			for (size_t k = j; k > i && j - k < LYR_LOOKBACK && best != RH_PERFECT;
			     k--) {
				int v, r = lines_rhyme(c, &c->lv[k - 1],
				                       &ring[(k - 1) % (LYR_LOOKBACK + 1)], l, tj,
				                       &v);
				if (r > best) {
					best = r;
					best_v = v;
					partner = k - 1;
				}
			}
			rhyme_info *ri = &c->rv[l->rhyme];
			if (partner != SIZE_MAX) {
				l->cls = c->lv[partner].cls;
				letter[j] = letter[partner];
				perfect += best == RH_PERFECT;
				slant += best == RH_SLANT;
				multis += best_v >= 2;
				if (json_array_size(pairs) < LYR_MAX_PAIRS) {
					json_t *pr = json_object(), *ln = json_array();
					append(ln, json_integer((json_int_t)partner), ok);
					append(ln, json_integer((json_int_t)j), ok);
					put(pr, "lines", ln, ok);
					put(pr, "type",
					    json_string(best == RH_PERFECT ? "perfect" : "slant"),
					    ok);
					put(pr, "vowels", json_integer(best_v), ok);
					append(pairs, pr, ok);
				}
			} else if (tj->n == 0 && ri->stanza == st) {
				l->cls = l->rhyme; /* by spelling, further back than the window */
				letter[j] = ri->letter;
			} else {
				letter[j] = (char)(next_letter < 52 ? letters[next_letter] : '?');
				next_letter++;
				l->cls = tj->n ? next_cls++ : l->rhyme;
			}
			if (l->cls == l->rhyme) {
				ri->stanza = st;
				ri->letter = letter[j];
			}
			if (slen < LYR_SCHEME_LINES)
				scheme[slen++] = letter[j];
		}
		for (size_t j = i; j < end; j++) {
			uint32_t r = c->lv[j].cls;
			if (j + 1 < end && c->lv[j + 1].cls == r)
				adjacent++;
			if (j + 2 < end && c->lv[j + 2].cls == r && c->lv[j + 1].cls != r)
				alternating++;
			size_t lo = j - i > LYR_RHYME_WINDOW ? j - LYR_RHYME_WINDOW : i;
			size_t hi = end - j > LYR_RHYME_WINDOW ? j + LYR_RHYME_WINDOW : end - 1;
			for (size_t k = lo; k <= hi; k++)
				if (k != j && c->lv[k].cls == r) {
					rhyming++;
					break;
				}
		}
		if (st < LYR_SCHEME_STANZAS)
			append(schemes, json_stringn(scheme, slen), ok);
		i = end;
	}
	free(ring);
	free(letter);
	json_t *o = json_object();
	put(o, "rhyme_scheme", schemes, ok);
	put(o, "rhyme_pairs", json_integer((json_int_t)adjacent + (json_int_t)alternating), ok);
	put(o, "adjacent_pairs", json_integer((json_int_t)adjacent), ok);
	put(o, "alternating_pairs", json_integer((json_int_t)alternating), ok);
	put(o, "rhyming_lines", json_integer((json_int_t)rhyming), ok);
	put(o, "rhyme_density", json_real(ratio(rhyming, c->lv_n)), ok);
	put(o, "pairs", pairs, ok);
	put(o, "perfect_pairs", json_integer((json_int_t)perfect), ok);
	put(o, "slant_pairs", json_integer((json_int_t)slant), ok);
	put(o, "multis", json_integer((json_int_t)multis), ok);
	put(o, "internal_rhymes", json_integer((json_int_t)internal_rhymes(c)), ok);
	return o;
}

/* Syllables per line: the list (the first LYR_FLOW_LINES), mean, variance. */
static json_t *flow_json(lyr_ctx *c, bool *ok)
{
	json_t *list = json_array();
	double sum = 0, sq = 0;
	for (size_t i = 0; i < c->lv_n; i++) {
		const line_info *l = &c->lv[i];
		uint64_t s = 0;
		for (uint32_t k = 0; k < l->nocc; k++)
			s += c->wv[c->occ[l->occ + k]].syllables;
		sum += (double)s;
		sq += (double)s * (double)s;
		if (i < LYR_FLOW_LINES)
			append(list, json_integer((json_int_t)s), ok);
	}
	double n = (double)c->lv_n;
	double mean = c->lv_n ? sum / n : 0.0;
	double var = c->lv_n ? sq / n - mean * mean : 0.0;
	json_t *o = json_object();
	put(o, "syllables_per_line", list, ok);
	put(o, "mean", json_real(round4(mean)), ok);
	put(o, "variance", json_real(round4(var > 0 ? var : 0.0)), ok);
	return o;
}

typedef struct {
	uint32_t id;
	uint32_t count;
	uint32_t first;
	const char *s;
	uint32_t len;
} ranked;

/* Count descending, then first appearance (hooks). */
static int cmp_hook(const void *a, const void *b)
{
	const ranked *x = a, *y = b;
	if (x->count != y->count)
		return x->count > y->count ? -1 : 1;
	return x->first < y->first ? -1 : x->first > y->first;
}

/* Count descending, then UTF-8 byte order of the word (top_words). */
static int cmp_word(const void *a, const void *b)
{
	const ranked *x = a, *y = b;
	if (x->count != y->count)
		return x->count > y->count ? -1 : 1;
	size_t n = x->len < y->len ? x->len : y->len;
	int d = memcmp(x->s, y->s, n);
	if (d)
		return d;
	return x->len < y->len ? -1 : x->len > y->len;
}

static int hooks_json(const lyr_ctx *c, json_t *root, bool *ok)
{
	size_t n = 0;
	uint64_t hook_lines = 0;
	for (size_t i = 0; i < c->hv_n; i++)
		if (c->hv[i].count >= 2)
			n++;
	ranked *r = malloc((n ? n : 1) * sizeof *r);
	if (r == NULL)
		return AIQ_ENOMEM;
	n = 0;
	for (size_t i = 0; i < c->hv_n; i++) {
		if (c->hv[i].count < 2)
			continue;
		const line_info *l = &c->lv[c->hv[i].first];
		r[n++] = (ranked){(uint32_t)i, c->hv[i].count, c->hv[i].first, c->arena + l->off,
		                  l->len};
		hook_lines += c->hv[i].count;
	}
	qsort(r, n, sizeof *r, cmp_hook);
	json_t *a = json_array();
	for (size_t i = 0; i < n && i < LYR_MAX_HOOKS; i++) {
		size_t len = r[i].len;
		if (len > LYR_HOOK_TEXT_MAX) {
			len = LYR_HOOK_TEXT_MAX;
			while ((r[i].s[len] & 0xc0) == 0x80)
				len--; /* cut at a code point boundary */
		}
		append(a, count_item("line", r[i].s, len, r[i].count, ok), ok);
	}
	free(r);
	put(root, "hooks", a, ok);
	put(root, "hook_count", json_integer((json_int_t)n), ok);
	put(root, "hook_ratio", json_real(ratio(hook_lines, c->lv_n)), ok);
	return AIQ_OK;
}

/* Content words merged by stem: the group's total count under its most
 * frequent form (the byte-wise smallest on a tie). Without a stemmer every
 * word is its own group. */
static int top_words_json(const lyr_ctx *c, json_t *root, size_t top, bool *ok)
{
	size_t nw = c->words.used;
	uint32_t *total = calloc(nw ? nw : 1, sizeof *total);
	uint32_t *best = malloc((nw ? nw : 1) * sizeof *best);
	ranked *r = malloc((nw ? nw : 1) * sizeof *r);
	if (total == NULL || best == NULL || r == NULL) {
		free(total);
		free(best);
		free(r);
		return AIQ_ENOMEM;
	}
	for (size_t i = 0; i < nw; i++)
		best[i] = LYR_NO_ID;
	for (size_t i = 0; i < nw; i++) {
		const word_info *w = &c->wv[i];
		if (!(w->flags & WF_CONTENT))
			continue;
		total[w->stem] += w->count;
		uint32_t b = best[w->stem];
		if (b != LYR_NO_ID) {
			const word_info *o = &c->wv[b];
			ranked x = {0, w->count, 0, c->arena + w->off, w->len};
			ranked y = {0, o->count, 0, c->arena + o->off, o->len};
			if (cmp_word(&x, &y) >= 0)
				continue;
		}
		best[w->stem] = (uint32_t)i;
	}
	size_t n = 0;
	for (size_t s = 0; s < nw; s++)
		if (best[s] != LYR_NO_ID) {
			const word_info *w = &c->wv[best[s]];
			r[n++] = (ranked){best[s], total[s], 0, c->arena + w->off, w->len};
		}
	qsort(r, n, sizeof *r, cmp_word);
	json_t *a = json_array();
	for (size_t i = 0; i < n && i < top; i++)
		append(a, count_item("word", r[i].s, r[i].len, r[i].count, ok), ok);
	free(r);
	free(best);
	free(total);
	put(root, "top_words", a, ok);
	return AIQ_OK;
}

static json_t *sentiment_json(const lyr_ctx *c, bool *ok)
{
	uint64_t hits = c->positive + c->negative;
	double score =
	        hits ? round4(((double)c->positive - (double)c->negative) / (double)hits) : 0.0;
	const char *label = score >= LYR_LABEL_THRESHOLD    ? "positive"
	                    : score <= -LYR_LABEL_THRESHOLD ? "negative"
	                                                    : "neutral";
	json_t *o = json_object();
	put(o, "score", json_real(score), ok);
	put(o, "label", json_string(label), ok);
	put(o, "positive", json_integer((json_int_t)c->positive), ok);
	put(o, "negative", json_integer((json_int_t)c->negative), ok);
	put(o, "negated", json_integer((json_int_t)c->negated), ok);
	return o;
}

/* From the share of letters in each script. */
static const char *language_guess(const lyr_ctx *c)
{
	uint64_t lat = c->letters[SC_LATIN], cyr = c->letters[SC_CYRILLIC];
	uint64_t all = lat + cyr + c->letters[SC_OTHER];
	if (all == 0)
		return "unknown";
	if (lat * 5 >= all * 4)
		return "en";
	if (cyr * 5 >= all * 4)
		return "ru";
	if ((lat + cyr) * 2 < all)
		return "unknown";
	return "mixed";
}

static int build_json(lyr_ctx *c, size_t top, char **out)
{
	bool ok = true;
	json_t *root = json_object();
	size_t unique = c->words.used;
	put(root, "line_count", json_integer((json_int_t)c->lv_n), &ok);
	put(root, "stanza_count", json_integer((json_int_t)c->stanza_count), &ok);
	put(root, "word_count", json_integer((json_int_t)c->word_count), &ok);
	put(root, "unique_word_count", json_integer((json_int_t)unique), &ok);
	put(root, "lexical_diversity", json_real(ratio(unique, c->word_count)), &ok);
	put(root, "char_count", json_integer((json_int_t)c->char_count), &ok);
	put(root, "syllable_count", json_integer((json_int_t)c->syllable_count), &ok);
	put(root, "avg_words_per_line", json_real(ratio(c->word_count, c->lv_n)), &ok);
	put(root, "avg_syllables_per_word", json_real(ratio(c->syllable_count, c->word_count)),
	    &ok);
	put(root, "rhyme", rhyme_json(c, &ok), &ok);
	put(root, "flow", flow_json(c, &ok), &ok);
	int rc = hooks_json(c, root, &ok);
	if (rc == AIQ_OK)
		rc = top_words_json(c, root, top, &ok);
	put(root, "sentiment", sentiment_json(c, &ok), &ok);
	put(root, "language", json_string(language_guess(c)), &ok);
	json_t *letters = json_object();
	put(letters, "latin", json_integer((json_int_t)c->letters[SC_LATIN]), &ok);
	put(letters, "cyrillic", json_integer((json_int_t)c->letters[SC_CYRILLIC]), &ok);
	put(letters, "other", json_integer((json_int_t)c->letters[SC_OTHER]), &ok);
	put(root, "letters", letters, &ok);
	put(root, "phonetics", json_string(c->phonemes ? "espeak-ng" : "spelling"), &ok);
#ifdef AIQ_HAVE_STEMMER
	put(root, "stemming", json_string("snowball"), &ok);
#else
	put(root, "stemming", json_string("none"), &ok);
#endif

	if (rc == AIQ_OK && ok) {
		/* Into our own malloc'd buffer, so aiq_free() is right whatever
		 * allocator jansson was given. */
		size_t flags = JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15);
		size_t need = json_dumpb(root, NULL, 0, flags);
		char *buf = need ? malloc(need + 1) : NULL;
		if (buf && json_dumpb(root, buf, need, flags) == need) {
			buf[need] = '\0';
			*out = buf;
		} else {
			free(buf);
			ok = false;
		}
	}
	json_decref(root);
	if (rc == AIQ_OK && !ok)
		rc = AIQ_ENOMEM;
	return rc ? aiq__err(rc, "lyrics: out of memory building the result") : AIQ_OK;
}

/* ---- entry point ------------------------------------------------------- */

static int parse_params(const char *params_json, size_t *top, bool *spelling)
{
	*top = LYR_DEFAULT_TOP;
	*spelling = false;
	if (params_json == NULL)
		return AIQ_OK;
	json_error_t jerr;
	json_t *p = json_loads(params_json, JSON_DECODE_ANY, &jerr);
	if (p == NULL)
		return aiq__err(AIQ_EJSON,
		                "lyrics: params are not valid JSON: %s (line %d, column %d)",
		                jerr.text, jerr.line, jerr.column);
	int rc = AIQ_OK;
	if (!json_is_object(p)) {
		rc = aiq__err(AIQ_EINVAL, "lyrics: params must be a JSON object");
	} else {
		json_t *tw = json_object_get(p, "top_words");
		if (tw != NULL) {
			json_int_t v = json_is_integer(tw) ? json_integer_value(tw) : -1;
			if (v < 0 || v > LYR_MAX_TOP)
				rc = aiq__err(
				        AIQ_EINVAL,
				        "lyrics: params.top_words must be an integer in 0..%d",
				        LYR_MAX_TOP);
			else
				*top = (size_t)v;
		}
		json_t *ph = json_object_get(p, "phonetics");
		const char *phs = json_is_string(ph) ? json_string_value(ph) : NULL;
		if (rc == AIQ_OK && ph != NULL) {
			if (phs && strcmp(phs, "spelling") == 0)
				*spelling = true;
			else if (!phs || strcmp(phs, "auto") != 0)
				rc = aiq__err(AIQ_EINVAL, "lyrics: params.phonetics must be "
				                          "\"auto\" or \"spelling\"");
		}
	}
	json_decref(p);
	return rc;
}

AIQ_API int aiq_lyrics_analyze(char **out, const char *text, const char *params_json)
{
	if (out == NULL)
		return aiq__err(AIQ_EINVAL, "lyrics: out is NULL");
	*out = NULL;
	if (text == NULL)
		return aiq__err(AIQ_EINVAL, "lyrics: text is NULL");
	size_t len = strnlen(text, (size_t)LYR_MAX_TEXT + 1);
	if (len > LYR_MAX_TEXT)
		return aiq__err(AIQ_ETOOBIG, "lyrics: text is over the %u-byte (1 MiB) limit",
		                LYR_MAX_TEXT);
	if (!aiq__utf8_valid(text, len))
		return aiq__err(AIQ_EINVAL,
		                "lyrics: text is not valid UTF-8 (bad byte at offset %zu)",
		                u8_bad_offset((const unsigned char *)text, len));
	size_t top;
	bool spelling;
	int rc = parse_params(params_json, &top, &spelling);
	if (rc)
		return rc;

	const unsigned char *t = (const unsigned char *)text;
	size_t start = 0;
	if (len >= 3 && t[0] == 0xef && t[1] == 0xbb && t[2] == 0xbf)
		start = 3; /* byte order mark */

	lyr_ctx c = {0};
	c.key[0] = aiq__rand_range(UINT64_MAX);
	c.key[1] = aiq__rand_range(UINT64_MAX);
	/* Normalizing never lengthens a word, and each word is followed in the
	 * text by a separator or the end, whose byte pays for the space (or the
	 * scratch NUL) after it in the arena: len + 1 bytes always suffice. */
	c.arena = malloc(len + 1);
	c.rarena = malloc(len + 1);
#ifdef AIQ_HAVE_STEMMER
	/* Stems and lines of stems are no longer than the words and lines. */
	c.sarena = malloc(len + 1);
	c.harena = malloc(len + 1);
	if (c.sarena == NULL || c.harena == NULL || ht_init(&c.stems)) {
		rc = aiq__err(AIQ_ENOMEM, "lyrics: out of memory");
		goto done;
	}
#endif
	if (c.arena == NULL || c.rarena == NULL || ht_init(&c.words) || ht_init(&c.hooks) ||
	    ht_init(&c.rhymes)) {
		rc = aiq__err(AIQ_ENOMEM, "lyrics: out of memory");
		goto done;
	}

	for (size_t i = start; i < len; i++)
		if ((t[i] & 0xc0) != 0x80 && t[i] != '\n' && t[i] != '\r')
			c.char_count++;

	for (size_t i = start; i < len;) {
		size_t le = i + strcspn(text + i, "\r\n");
		rc = process_line(&c, t, i, le);
		if (rc) {
			aiq__err(rc, "lyrics: out of memory");
			goto done;
		}
		if (le < len && t[le] == '\r' && t[le + 1] == '\n')
			i = le + 2;
		else
			i = le + (le < len);
	}
#ifdef AIQ_HAVE_ESPEAK
	rc = spelling ? AIQ_OK : phon_pass(&c);
	if (rc) {
		aiq__err(rc, "lyrics: out of memory");
		goto done;
	}
#endif
	rc = build_json(&c, top, out);
done:
	ctx_free(&c);
	return rc;
}

/* ---- the built-in analyzer "lyrics" --------------------------------------- */

static void lyrics_analyzer(aiq_task *t, const char *text, const char *params_json, void *ud)
{
	(void)ud;
	char *out = NULL;
	int rc = aiq_lyrics_analyze(&out, text, params_json);
	if (rc == AIQ_OK) {
		aiq_task_succeed(t, out);
		aiq_free(out);
		return;
	}
	aiq_task_fail(t, rc == AIQ_ENOMEM ? "MemoryError" : "ValueError", aiq_error_last(),
	              "builtins");
}

static int lyrics_add(aiq_worker *w, const aiq_config *cfg)
{
	(void)cfg;
	return aiq__worker_add_builtin_analyzer(w, "lyrics", lyrics_analyzer, NULL, NULL);
}

const aiq__analyzer_def aiq__lyrics_analyzer = {"lyrics", lyrics_add};
