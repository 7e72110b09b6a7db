/*
 * espeak-ng behind a mutex with a cache of the words it read, and line
 * endings compared by sound (phon.h).
 */
#include "phon.h"

#include <espeak-ng/speak_lib.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- espeak-ng: one initialization, one caller at a time ---------------- */

static pthread_once_t phon_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t phon_lock = PTHREAD_MUTEX_INITIALIZER;
static bool phon_ok; /* written once, under phon_once */

#define PHON_IPA_MAX 256 /* bytes of IPA kept for one word, NUL included */

/*
 * One voice, loaded once: Russian. espeak-ng reads a word in Latin letters
 * through that voice with its English translator (it switches by itself,
 * "(en)...(ru)" in the output, which the parser drops), and gives the same
 * phonemes as the English voice. Switching voices per word or line instead
 * would leak about 1.3 KB per switch in espeak-ng 1.51
 * (espeak_SetVoiceByName), which a long-running worker cannot afford.
 */
static void phon_init(void)
{
	/* SYNCHRONOUS: no audio device and, unlike the asynchronous modes,
	 * no thread of espeak-ng's own. DONT_EXIT: a missing data directory
	 * gives an error, not exit(). */
	phon_ok = espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, NULL, espeakINITIALIZE_DONT_EXIT) >
	                  0 &&
	          espeak_SetVoiceByName("ru") == EE_OK;
}

bool aiq__phon_available(void)
{
	pthread_once(&phon_once, phon_init);
	return phon_ok;
}

/* espeak-ng's IPA for one word. phon_lock held. */
static void espeak_ipa(char ipa[PHON_IPA_MAX], const char *word)
{
	/* A copy padded with NULs: espeak-ng reads a little past the end of
	 * its text, and the caller's buffer goes on with bytes it has not
	 * written yet. */
	char text[256];
	size_t wl = strnlen(word, sizeof text - 8);
	memset(text, 0, sizeof text);
	memcpy(text, word, wl);
	const void *p = text;
	/* One clause per call; a word is one clause, the bound is a guard. */
	size_t ilen = 0;
	for (int k = 0; k < 4 && p != NULL; k++) {
		const char *r = espeak_TextToPhonemes(&p, espeakCHARS_UTF8, 0x02 /* IPA */);
		if (r == NULL)
			break;
		size_t rl = strlen(r);
		if (rl > PHON_IPA_MAX - 1 - ilen)
			rl = PHON_IPA_MAX - 1 - ilen;
		memcpy(ipa + ilen, r, rl);
		ilen += rl;
	}
	ipa[ilen] = '\0';
}

/* ---- the words already read -------------------------------------------- */

/*
 * Lyrics repeat their words, and a catalogue repeats its vocabulary, so the
 * IPA of each word is kept: a hit costs a hash and a copy instead of a call
 * into espeak-ng, and is not serialized behind phon_lock. Direct-mapped
 * (a word replaces the one in its slot), allocated on the first use, 2 MiB;
 * words or IPA too long for a slot are not kept. espeak-ng gives the same
 * IPA for the same word and voice, so a hit answers what a miss would.
 */
#define CACHE_SLOTS 16384 /* a power of two */
#define CACHE_WORD  40
#define CACHE_IPA   88
struct cache_slot {
	char word[CACHE_WORD]; /* "" when empty */
	char ipa[CACHE_IPA];
};
/* The slots, allocated once (cache_once), and a lock per stripe of slots
 * (slot i: stripe i % CACHE_STRIPES) so threads seldom wait on each other. */
#define CACHE_STRIPES 64
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;
static struct cache_slot *cache; /* NULL when the allocation failed */
static struct {
	_Alignas(64) pthread_mutex_t lock; /* a cache line each */
	size_t hits, misses;
} stripes[CACHE_STRIPES];

static void cache_init(void)
{
	for (size_t i = 0; i < CACHE_STRIPES; i++)
		pthread_mutex_init(&stripes[i].lock, NULL);
	cache = calloc(CACHE_SLOTS, sizeof *cache);
}

static size_t cache_index(const char *word)
{
	uint64_t h = UINT64_C(1469598103934665603); /* FNV-1a */
	for (const unsigned char *c = (const unsigned char *)word; *c; c++)
		h = (h ^ *c) * UINT64_C(1099511628211);
	return (size_t)(h ^ (h >> 29)) & (CACHE_SLOTS - 1);
}

static bool cache_get(char ipa[PHON_IPA_MAX], const char *word, size_t wl)
{
	if (wl == 0 || wl >= CACHE_WORD)
		return false;
	pthread_once(&cache_once, cache_init);
	if (cache == NULL)
		return false;
	size_t i = cache_index(word);
	bool hit = false;
	pthread_mutex_lock(&stripes[i % CACHE_STRIPES].lock);
	if (strcmp(cache[i].word, word) == 0) {
		memcpy(ipa, cache[i].ipa, CACHE_IPA);
		hit = true;
		stripes[i % CACHE_STRIPES].hits++;
	} else {
		stripes[i % CACHE_STRIPES].misses++;
	}
	pthread_mutex_unlock(&stripes[i % CACHE_STRIPES].lock);
	return hit;
}

static void cache_put(const char *word, size_t wl, const char *ipa)
{
	/* A word that fits had cache_get() run cache_init() on this thread. */
	if (wl == 0 || wl >= CACHE_WORD || strlen(ipa) >= CACHE_IPA || cache == NULL)
		return;
	size_t il = strlen(ipa);
	size_t i = cache_index(word);
	pthread_mutex_lock(&stripes[i % CACHE_STRIPES].lock);
	memcpy(cache[i].word, word, wl + 1);
	memcpy(cache[i].ipa, ipa, il + 1);
	pthread_mutex_unlock(&stripes[i % CACHE_STRIPES].lock);
}

void aiq__phon_cache_stats(size_t *hits, size_t *misses)
{
	*hits = *misses = 0;
	for (size_t i = 0; i < CACHE_STRIPES; i++) {
		pthread_mutex_lock(&stripes[i].lock);
		*hits += stripes[i].hits;
		*misses += stripes[i].misses;
		pthread_mutex_unlock(&stripes[i].lock);
	}
}

size_t aiq__phon_word(aiq__phone *out, size_t cap, const char *word, int voice)
{
	if (!aiq__phon_available())
		return 0;
	(void)voice; /* both through the Russian voice, see phon_init() */
	char ipa[PHON_IPA_MAX];
	size_t wl = strlen(word);
	if (!cache_get(ipa, word, wl)) {
		pthread_mutex_lock(&phon_lock);
		espeak_ipa(ipa, word);
		pthread_mutex_unlock(&phon_lock);
		cache_put(word, wl, ipa);
	}
	return aiq__phon_parse(out, cap, ipa);
}

/* ---- parsing espeak-ng's IPA ------------------------------------------- */

static uint32_t next_cp(const unsigned char *s, size_t *i)
{
	uint32_t c = s[*i];
	size_t n = c < 0x80 ? 0 : c < 0xe0 ? 1 : c < 0xf0 ? 2 : 3;
	if (n)
		c &= 0x3f >> n;
	*i += 1;
	for (; n > 0 && (s[*i] & 0xc0) == 0x80; n--)
		c = (c << 6) | (s[(*i)++] & 0x3f);
	return c;
}

static bool ipa_vowel(uint32_t c)
{
	static const char vowels[] = "aeiouy";
	static const uint32_t ipa[] = {0xe6,  0xf8,  0x153, 0x250, 0x251, 0x252, 0x254,
	                               0x258, 0x259, 0x25a, 0x25b, 0x25c, 0x25d, 0x25e,
	                               0x264, 0x268, 0x26a, 0x26f, 0x275, 0x276, 0x289,
	                               0x28a, 0x28c, 0x28f, 0x1d7b};
	if (c < 0x80)
		return c && strchr(vowels, (int)c) != NULL;
	for (size_t k = 0; k < sizeof ipa / sizeof ipa[0]; k++)
		if (c == ipa[k])
			return true;
	return false;
}

/* Marks that belong to the phone before them: length, palatalization,
 * aspiration, labialization, combining diacritics and the tie bar. */
static bool ipa_modifier(uint32_t c)
{
	return c == 0x2d0 || c == 0x2d1 || c == 0x2b2 || c == 0x2b0 || c == 0x2b7 || c == 0x2e0 ||
	       (c >= 0x300 && c <= 0x36f);
}

static bool ipa_letter(uint32_t c)
{
	if (c < 0x80)
		return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
	return c >= 0xc0 && c != 0x2c8 && c != 0x2cc && !ipa_modifier(c);
}

/* Two vowels espeak-ng writes for one nucleus. */
static bool diphthong(const char *first, uint32_t second)
{
	static const char *const pairs[] = {"aɪ", "aʊ", "eɪ", "oʊ", "əʊ", "ɔɪ",
	                                    "ɪə", "iə", "eə", "ʊə", "ɛə"};
	char pair[AIQ_PHON_SYM * 2];
	size_t fl = strlen(first);
	if (fl > AIQ_PHON_SYM - 1)
		return false;
	memcpy(pair, first, fl);
	unsigned char *d = (unsigned char *)pair + fl;
	if (second < 0x80) {
		*d++ = (unsigned char)second;
	} else {
		*d++ = (unsigned char)(0xc0 | (second >> 6));
		*d++ = (unsigned char)(0x80 | (second & 0x3f));
	}
	*d = '\0';
	for (size_t k = 0; k < sizeof pairs / sizeof pairs[0]; k++)
		if (strcmp(pair, pairs[k]) == 0)
			return true;
	return false;
}

static void sym_append(aiq__phone *ph, const unsigned char *s, size_t from, size_t to)
{
	size_t l = strlen(ph->sym);
	if (to - from <= AIQ_PHON_SYM - 1 - l) {
		memcpy(ph->sym + l, s + from, to - from);
		ph->sym[l + to - from] = '\0';
	}
}

static void reverse(aiq__phone *p, size_t from, size_t to)
{
	for (; from + 1 < to; from++, to--) {
		aiq__phone t = p[from];
		p[from] = p[to - 1];
		p[to - 1] = t;
	}
}

size_t aiq__phon_parse(aiq__phone *out, size_t cap, const char *ipa)
{
	const unsigned char *s = (const unsigned char *)ipa;
	size_t n = 0, total = 0;
	int stress = 0;
	bool prev_vowel_open = false; /* the last phone is a vowel a second one may join */
	if (cap == 0)
		return 0;
	for (size_t i = 0; s[i];) {
		if (s[i] == '(') { /* a language switch such as "(en)" */
			while (s[i] && s[i] != ')')
				i++;
			if (s[i])
				i++;
			continue;
		}
		size_t from = i;
		uint32_t c = next_cp(s, &i);
		if (c == 0x2c8 || c == 0x2cc) {
			stress = c == 0x2c8 ? 2 : 1;
			prev_vowel_open = false;
			continue;
		}
		if (ipa_modifier(c)) {
			if (total > 0) {
				sym_append(&out[(total - 1) % cap], s, from, i);
				if (c == 0x2d0 || c == 0x2d1)
					prev_vowel_open =
					        false; /* a long vowel is not a glide's start */
			}
			continue;
		}
		if (!ipa_letter(c)) {
			prev_vowel_open = false;
			continue;
		}
		bool v = ipa_vowel(c);
		if (v && prev_vowel_open && diphthong(out[(total - 1) % cap].sym, c)) {
			sym_append(&out[(total - 1) % cap], s, from, i);
			prev_vowel_open = false;
			continue;
		}
		/* A ring of cap phones: the end of a word is what rhymes. */
		aiq__phone *ph = &out[total % cap];
		memset(ph, 0, sizeof *ph);
		sym_append(ph, s, from, i);
		ph->vowel = v;
		if (v) {
			ph->stress = (unsigned char)stress;
			stress = 0;
		}
		prev_vowel_open = v;
		total++;
	}
	n = total < cap ? total : cap;
	if (total > cap) {
		/* The oldest phone is at total % cap: rotate it to the front by
		 * three reversals. */
		size_t head = total % cap;
		reverse(out, 0, head);
		reverse(out, head, cap);
		reverse(out, 0, cap);
	}
	return n;
}

size_t aiq__phon_syllables(const aiq__phone *p, size_t n)
{
	size_t v = 0;
	for (size_t i = 0; i < n; i++)
		v += p[i].vowel;
	return v;
}

size_t aiq__phon_rhyme_start(const aiq__phone *p, size_t n)
{
	size_t last = n, second = n, any = n;
	for (size_t i = 0; i < n; i++) {
		if (!p[i].vowel)
			continue;
		any = i;
		if (p[i].stress == 2)
			last = i;
		else if (p[i].stress == 1)
			second = i;
	}
	/* The later of the two: lullaby rhymes on its secondary stress. */
	if (last < n && second < n)
		return last > second ? last : second;
	return last < n ? last : second < n ? second : any;
}

/* ---- comparing by sound ------------------------------------------------- */

/* A vowel without its length marks, so me /iː/ and happy /i/ compare. */
static void vowel_base(const char *sym, char *out)
{
	const unsigned char *s = (const unsigned char *)sym;
	size_t o = 0;
	for (size_t i = 0; s[i];) {
		size_t from = i;
		uint32_t c = next_cp(s, &i);
		if (c == 0x2d0 || c == 0x2d1)
			continue;
		memcpy(out + o, s + from, i - from);
		o += i - from;
	}
	out[o] = '\0';
}

/* Unstressed vowels that all sound like a schwa. */
static bool reduced(const char *base)
{
	static const char *const r[] = {"ə", "ɐ", "ɪ", "ʌ", "ᵻ", "i", "ɨ", "ɚ", "a", "ɜ"};
	for (size_t k = 0; k < sizeof r / sizeof r[0]; k++)
		if (strcmp(base, r[k]) == 0)
			return true;
	return false;
}

/* Vowels that one voice writes apart and a listener hears as one: the
 * Russian o and ё /ɵ/ and the English /əʊ/ of "no", the Russian a and ɑ,
 * e and ɛ, u and ʊ, ɨ and y. */
static const char *vowel_coarse(const char *base)
{
	static const char *const map[][2] = {
	        {"əʊ", "o"}, {"oʊ", "o"}, {"ɔ", "o"}, {"ɵ", "o"},
	        {"ɑ", "a"},  {"ɛ", "e"},  {"ʊ", "u"}, {"y", "ɨ"},
	};
	for (size_t k = 0; k < sizeof map / sizeof map[0]; k++)
		if (strcmp(base, map[k][0]) == 0)
			return map[k][1];
	return base;
}

static bool vowels_alike(const aiq__phone *x, const aiq__phone *y, bool stressed)
{
	char a[AIQ_PHON_SYM], b[AIQ_PHON_SYM];
	vowel_base(x->sym, a);
	vowel_base(y->sym, b);
	if (strcmp(a, b) == 0 || strcmp(vowel_coarse(a), vowel_coarse(b)) == 0)
		return true;
	return !stressed && x->stress == 0 && y->stress == 0 && reduced(a) && reduced(b);
}

/* Consonant classes: voicing pairs, nasals, liquids, and so on, with
 * palatalization and other marks ignored. */
static char cons_class(const char *sym)
{
	static const struct {
		const char *members;
		char cls;
	} classes[] = {
	        {"p b", 'P'},       {"t d", 'T'},       {"k g ɡ", 'K'},     {"f v", 'F'},
	        {"θ ð", 'H'},       {"s z", 'S'},       {"ʃ ʒ ɕ ʂ ʐ", 'X'}, {"m n ŋ ɲ ɱ", 'N'},
	        {"l ɫ ɭ ʎ", 'L'},   {"r ɹ ɾ ɻ ʀ", 'R'}, {"j", 'J'},         {"w", 'W'},
	        {"h x χ ɣ ɦ", 'Q'},
	};
	const unsigned char *s = (const unsigned char *)sym;
	size_t i = 0;
	(void)next_cp(s, &i);
	char first[AIQ_PHON_SYM];
	memcpy(first, sym, i);
	first[i] = '\0';
	for (size_t k = 0; k < sizeof classes / sizeof classes[0]; k++) {
		const char *m = classes[k].members;
		size_t fl = strlen(first);
		for (const char *q = m; (q = strstr(q, first)) != NULL; q += fl)
			if ((q == m || q[-1] == ' ') && (q[fl] == ' ' || q[fl] == '\0'))
				return classes[k].cls;
	}
	return '?';
}

static bool cons_alike(const aiq__phone *x, const aiq__phone *y)
{
	char cx = cons_class(x->sym), cy = cons_class(y->sym);
	if (cx == '?' || cy == '?')
		return strcmp(x->sym, y->sym) == 0;
	return cx == cy;
}

/* Consonant clusters alike: the same classes, or one consonant more in
 * one of them (hand / plan, солнце / оконце). */
static bool clusters_alike(const aiq__phone *a, size_t na, const aiq__phone *b, size_t nb)
{
	if (na < nb) {
		const aiq__phone *t = a;
		a = b;
		b = t;
		size_t tn = na;
		na = nb;
		nb = tn;
	}
	if (na - nb > 1)
		return false;
	size_t skip = na; /* the one consonant of a left out, if any */
	for (size_t i = 0, j = 0; j < nb; i++, j++) {
		if (cons_alike(&a[i], &b[j]))
			continue;
		if (skip != na || na == nb)
			return false;
		skip = i;
		j--;
	}
	return true;
}

/* The phone that supports an open stressed final vowel: the nearest one
 * before it that is not /j/ (друзья /ʑjja/, нельзя /ʑɑ/), as a class. */
static char support(const aiq__phone *p, size_t r)
{
	while (r > 0 && !p[r - 1].vowel && strcmp(p[r - 1].sym, "j") == 0)
		r--;
	if (r == 0)
		return '-';
	if (p[r - 1].vowel)
		return 'V';
	return cons_class(p[r - 1].sym);
}

int aiq__phon_rhyme(const aiq__phone *a, size_t na, const aiq__phone *b, size_t nb,
                    bool open_support, int *vowels)
{
	*vowels = 0;
	size_t ra = aiq__phon_rhyme_start(a, na), rb = aiq__phon_rhyme_start(b, nb);
	if (ra == na || rb == nb)
		return AIQ_RHYME_NONE;
	if (open_support && ra == na - 1 && rb == nb - 1 && support(a, ra) != support(b, rb))
		return AIQ_RHYME_NONE;
	int kind = AIQ_RHYME_NONE;
	if (na - ra == nb - rb) {
		kind = AIQ_RHYME_PERFECT;
		for (size_t i = 0; i < na - ra && kind; i++)
			if (a[ra + i].vowel != b[rb + i].vowel ||
			    strcmp(a[ra + i].sym, b[rb + i].sym) != 0)
				kind = AIQ_RHYME_NONE;
	}
	if (kind == AIQ_RHYME_NONE) {
		/* Slant: walk both tails vowel by vowel, comparing the clusters. */
		if (!vowels_alike(&a[ra], &b[rb], true))
			return AIQ_RHYME_NONE;
		size_t i = ra + 1, j = rb + 1;
		for (;;) {
			size_t ei = i, ej = j;
			while (ei < na && !a[ei].vowel)
				ei++;
			while (ej < nb && !b[ej].vowel)
				ej++;
			bool final = ei == na && ej == nb;
			if ((ei == na) != (ej == nb))
				return AIQ_RHYME_NONE; /* a different number of vowels */
			if (!clusters_alike(a + i, ei - i, b + j, ej - j))
				return AIQ_RHYME_NONE;
			if (final)
				break;
			if (!vowels_alike(&a[ei], &b[ej], false))
				return AIQ_RHYME_NONE;
			i = ei + 1;
			j = ej + 1;
		}
		kind = AIQ_RHYME_SLANT;
	}
	/* The vowels of the rhyme, and before its start those that are the
	 * same vowel again (reduced ones do not count there): ocean / motion
	 * has 2, open heart / apart 1. */
	int v = 0;
	for (size_t k = ra; k < na; k++)
		v += a[k].vowel;
	size_t i = ra, j = rb;
	for (;;) {
		while (i > 0 && !a[i - 1].vowel)
			i--;
		while (j > 0 && !b[j - 1].vowel)
			j--;
		if (i == 0 || j == 0 || !vowels_alike(&a[i - 1], &b[j - 1], true))
			break;
		v++;
		i--;
		j--;
	}
	*vowels = v > 0 ? v : 1;
	return kind;
}
