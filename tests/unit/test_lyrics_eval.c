/*
 * Evaluation of the built-in lyrics analyzer against hand-labelled lyrics
 * (tests/data/lyrics_eval.json, described in docs/lyrics.md, "Evaluation").
 *
 * Every stanza carries the rhyme scheme a listener hears and the syllable
 * count of each line as normally sung. The test measures how often the
 * analyzer agrees (exact scheme string per stanza; syllables per line within
 * +-1, each line analyzed alone), prints the figures, the worst misses and
 * the time per lyric, and fails when agreement drops below the floors
 * below. It runs twice: as the build and espeak-ng allow ("auto": by sound
 * when espeak-ng is there) and with params {"phonetics": "spelling"}, the
 * fallback every build has.
 */
#include "internal.h"
#include "testutil.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/*
 * Floors, in percent, of the spelling rules (params phonetics "spelling",
 * and every build without espeak-ng): the level they measured on this set,
 * rounded down a little, so the test guards against regressions.
 */
#define RHYME_FLOOR_ALL   45.0 /* measured 37/80 = 46.2% */
#define RHYME_FLOOR_EN    33.0 /* measured 11/32 = 34.4% */
#define RHYME_FLOOR_RU    56.0 /* measured 16/28 = 57.1% */
#define RHYME_FLOOR_MIXED 49.0 /* measured 10/20 = 50.0% */
#define SYLL_FLOOR_ALL    98.5 /* measured 317/320 = 99.1% */
#define SYLL_FLOOR_EN     98.5 /* measured 127/128 = 99.2% */
#define SYLL_FLOOR_RU     99.5 /* measured 112/112 = 100.0% */
#define SYLL_FLOOR_MIXED  97.0 /* measured 78/80 = 97.5% */

/*
 * Floors of the phoneme mode (espeak-ng 1.51 with Debian 12's data): what it
 * measured, minus a margin of about ten points for rhymes (three stanzas of
 * 32, two of 20) and two for syllables, for another espeak-ng data version
 * that stresses a few words otherwise.
 */
#define PH_RHYME_FLOOR_ALL   70.0 /* measured 64/80 = 80.0% */
#define PH_RHYME_FLOOR_EN    88.0 /* measured 32/32 = 100.0% */
#define PH_RHYME_FLOOR_RU    64.0 /* measured 21/28 = 75.0% */
#define PH_RHYME_FLOOR_MIXED 45.0 /* measured 11/20 = 55.0% */
#define PH_SYLL_FLOOR        98.0 /* all, en, ru, mixed: measured 320/320 = 100.0% */

/* How many of the worst misses of each kind are printed. */
#define WORST 12

enum { LANG_EN, LANG_RU, LANG_MIXED, LANG_N };
static const char *const lang_names[LANG_N] = {"en", "ru", "mixed"};

struct tally {
	int stanzas, schemes_ok;
	int lines, syll_ok, syll_exact;
};

struct miss {
	char what[192]; /* id and stanza or line */
	char want[64], got[64];
	int badness; /* differing letters, or syllables off */
};

struct misses {
	struct miss *v;
	size_t n, cap;
};

static void add_miss(struct misses *m, int badness, const char *want, const char *got,
                     const char *what)
{
	if (m->n == m->cap) {
		m->cap = m->cap ? m->cap * 2 : 64;
		m->v = realloc(m->v, m->cap * sizeof *m->v);
		ck_assert_ptr_nonnull(m->v);
	}
	struct miss *x = &m->v[m->n++];
	snprintf(x->what, sizeof x->what, "%s", what);
	snprintf(x->want, sizeof x->want, "%s", want);
	snprintf(x->got, sizeof x->got, "%s", got);
	x->badness = badness;
}

static int by_badness(const void *a, const void *b)
{
	const struct miss *x = a, *y = b;
	if (x->badness != y->badness)
		return y->badness - x->badness;
	return strcmp(x->what, y->what); /* stable order for the report */
}

static void print_worst(const char *title, struct misses *m)
{
	if (m->n > 0) /* qsort may not be given NULL, even for no elements */
		qsort(m->v, m->n, sizeof *m->v, by_badness);
	printf("worst %s misses (%zu in all):\n", title, m->n);
	for (size_t i = 0; i < m->n && i < WORST; i++)
		printf("  %-48s expected %-6s got %s\n", m->v[i].what, m->v[i].want, m->v[i].got);
}

static const char *mode_params; /* NULL or {"phonetics":"spelling"} */

static json_t *analyze(const char *text)
{
	char *out = NULL;
	int rc = aiq_lyrics_analyze(&out, text, mode_params);
	ck_assert_msg(rc == AIQ_OK, "rc %d: %s", rc, aiq_error_last());
	json_t *j = json_loads(out, 0, NULL);
	ck_assert_ptr_nonnull(j);
	aiq_free(out);
	return j;
}

static int lang_index(const char *lang)
{
	for (int i = 0; i < LANG_N; i++)
		if (strcmp(lang, lang_names[i]) == 0)
			return i;
	ck_abort_msg("unknown lang %s", lang);
	return 0;
}

static int differing_letters(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	int d = (int)(la > lb ? la - lb : lb - la);
	for (size_t i = 0; i < la && i < lb; i++)
		d += a[i] != b[i];
	return d;
}

static double pct(int ok, int all)
{
	return all ? 100.0 * ok / all : 0.0;
}

/* Score one entry: its stanzas' schemes and its lines' syllables. */
static void score_entry(json_t *e, struct tally *t, struct misses *rm, struct misses *sm)
{
	const char *id = json_string_value(json_object_get(e, "id"));
	const char *text = json_string_value(json_object_get(e, "text"));
	json_t *stanzas = json_object_get(e, "stanzas");
	ck_assert_msg(id && text && json_is_array(stanzas), "malformed entry");

	json_t *j = analyze(text);
	json_t *schemes = json_object_get(json_object_get(j, "rhyme"), "rhyme_scheme");
	ck_assert_ptr_nonnull(schemes);

	char *copy = strdup(text);
	ck_assert_ptr_nonnull(copy);
	char *p = copy;
	size_t si;
	json_t *st;
	json_array_foreach(stanzas, si, st)
	{
		const char *want = json_string_value(json_object_get(st, "scheme"));
		json_t *syl = json_object_get(st, "syllables");
		ck_assert_msg(want && json_is_array(syl), "%s: malformed stanza", id);
		const char *got = json_string_value(json_array_get(schemes, si));
		if (!got)
			got = "-";
		t->stanzas++;
		if (strcmp(want, got) == 0) {
			t->schemes_ok++;
		} else {
			char what[96];
			snprintf(what, sizeof what, "%s stanza %zu", id, si + 1);
			add_miss(rm, differing_letters(want, got), want, got, what);
		}

		/* The stanza's lines, as the data file lays them out. */
		for (size_t li = 0; li < json_array_size(syl); li++) {
			char *nl = strchr(p, '\n');
			ck_assert_msg(nl != NULL && nl != p,
			              "%s: stanza %zu has fewer lines than labels", id, si + 1);
			*nl = '\0';
			json_t *lj = analyze(p);
			long long n = json_integer_value(json_object_get(lj, "syllable_count"));
			long long w = json_integer_value(json_array_get(syl, li));
			json_decref(lj);
			t->lines++;
			long long off = n > w ? n - w : w - n;
			t->syll_exact += off == 0;
			if (off <= 1) {
				t->syll_ok++;
			} else {
				char ws[24], gs[24], what[192];
				snprintf(ws, sizeof ws, "%lld", w);
				snprintf(gs, sizeof gs, "%lld", n);
				snprintf(what, sizeof what, "%s \"%s\"", id, p);
				add_miss(sm, (int)off, ws, gs, what);
			}
			p = nl + 1;
		}
		ck_assert_msg(*p == '\n' || *p == '\0', "%s: stanza %zu has more lines than labels",
		              id, si + 1);
		if (*p == '\n')
			p++;
	}
	ck_assert_msg(json_array_size(schemes) == json_array_size(stanzas),
	              "%s: analyzer found %zu stanzas, labels have %zu", id,
	              json_array_size(schemes), json_array_size(stanzas));
	free(copy);
	json_decref(j);
}

static void check_floor(const char *what, double got, double floor)
{
	ck_assert_msg(got >= floor, "%s agreement %.1f%% is below its floor %.1f%%", what, got,
	              floor);
}

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Runs the set in one mode; returns whether the analyzer went by sound. */
static bool run_eval(const char *params, struct tally *t, struct tally *all_out)
{
	char *data = aiq_test_read_data("lyrics_eval.json", NULL);
	json_error_t err;
	json_t *set = json_loads(data, 0, &err);
	ck_assert_msg(set != NULL, "lyrics_eval.json: %s (line %d)", err.text, err.line);
	ck_assert(json_is_array(set));
	ck_assert_uint_ge(json_array_size(set), 40);

	mode_params = params;
	struct tally all = {0, 0, 0, 0, 0};
	struct misses rm = {NULL, 0, 0}, sm = {NULL, 0, 0};
	size_t i;
	json_t *e;
	json_array_foreach(set, i, e)
	{
		int l = lang_index(json_string_value(json_object_get(e, "lang")));
		score_entry(e, &t[l], &rm, &sm);
	}
	/* Time per lyric: each whole text once more (the scoring above also
	 * analyzes every line alone). */
	double t0 = now_ms();
	bool by_sound = false;
	json_array_foreach(set, i, e)
	{
		json_t *j = analyze(json_string_value(json_object_get(e, "text")));
		by_sound = strcmp(json_string_value(json_object_get(j, "phonetics")),
		                  "espeak-ng") == 0;
		json_decref(j);
	}
	double ms = (now_ms() - t0) / (double)json_array_size(set);
	for (int l = 0; l < LANG_N; l++) {
		all.stanzas += t[l].stanzas, all.schemes_ok += t[l].schemes_ok;
		all.lines += t[l].lines, all.syll_ok += t[l].syll_ok;
		all.syll_exact += t[l].syll_exact;
	}

	printf("lyrics evaluation (%s, phonetics \"%s\"): %zu lyrics, %d stanzas, %d lines, "
	       "%.2f ms per lyric\n",
	       params ? params : "default params", by_sound ? "espeak-ng" : "spelling",
	       json_array_size(set), all.stanzas, all.lines, ms);
	printf("  %-6s %22s %26s %20s\n", "", "rhyme scheme exact", "syllables per line +-1",
	       "(exactly)");
	for (int l = 0; l <= LANG_N; l++) {
		const struct tally *x = l < LANG_N ? &t[l] : &all;
		printf("  %-6s %4d/%-4d = %5.1f%%      %4d/%-4d = %5.1f%%      %4d/%-4d = "
		       "%5.1f%%\n",
		       l < LANG_N ? lang_names[l] : "all", x->schemes_ok, x->stanzas,
		       pct(x->schemes_ok, x->stanzas), x->syll_ok, x->lines,
		       pct(x->syll_ok, x->lines), x->syll_exact, x->lines,
		       pct(x->syll_exact, x->lines));
	}
	print_worst("rhyme-scheme", &rm);
	print_worst("syllable", &sm);
	fflush(stdout);
	free(rm.v);
	free(sm.v);
	json_decref(set);
	free(data);
	*all_out = all;
	return by_sound;
}

START_TEST(test_eval_spelling)
{
	struct tally t[LANG_N] = {{0, 0, 0, 0, 0}}, all;
	bool by_sound = run_eval("{\"phonetics\":\"spelling\"}", t, &all);
	ck_assert_msg(!by_sound, "params phonetics \"spelling\" still went by sound");

	check_floor("rhyme (all)", pct(all.schemes_ok, all.stanzas), RHYME_FLOOR_ALL);
	check_floor("rhyme (en)", pct(t[LANG_EN].schemes_ok, t[LANG_EN].stanzas), RHYME_FLOOR_EN);
	check_floor("rhyme (ru)", pct(t[LANG_RU].schemes_ok, t[LANG_RU].stanzas), RHYME_FLOOR_RU);
	check_floor("rhyme (mixed)", pct(t[LANG_MIXED].schemes_ok, t[LANG_MIXED].stanzas),
	            RHYME_FLOOR_MIXED);
	check_floor("syllables (all)", pct(all.syll_ok, all.lines), SYLL_FLOOR_ALL);
	check_floor("syllables (en)", pct(t[LANG_EN].syll_ok, t[LANG_EN].lines), SYLL_FLOOR_EN);
	check_floor("syllables (ru)", pct(t[LANG_RU].syll_ok, t[LANG_RU].lines), SYLL_FLOOR_RU);
	check_floor("syllables (mixed)", pct(t[LANG_MIXED].syll_ok, t[LANG_MIXED].lines),
	            SYLL_FLOOR_MIXED);
}
END_TEST

START_TEST(test_eval_phonemes)
{
	struct tally t[LANG_N] = {{0, 0, 0, 0, 0}}, all;
	bool by_sound = run_eval(NULL, t, &all);
#ifdef AIQ_HAVE_ESPEAK
	ck_assert_msg(by_sound, "built with espeak-ng but the analyzer went by spelling "
	                        "(is espeak-ng-data installed?)");
#endif
	if (!by_sound)
		return; /* the spelling floors were checked by test_eval_spelling */
	check_floor("rhyme (all)", pct(all.schemes_ok, all.stanzas), PH_RHYME_FLOOR_ALL);
	check_floor("rhyme (en)", pct(t[LANG_EN].schemes_ok, t[LANG_EN].stanzas),
	            PH_RHYME_FLOOR_EN);
	check_floor("rhyme (ru)", pct(t[LANG_RU].schemes_ok, t[LANG_RU].stanzas),
	            PH_RHYME_FLOOR_RU);
	check_floor("rhyme (mixed)", pct(t[LANG_MIXED].schemes_ok, t[LANG_MIXED].stanzas),
	            PH_RHYME_FLOOR_MIXED);
	check_floor("syllables (all)", pct(all.syll_ok, all.lines), PH_SYLL_FLOOR);
	for (int l = 0; l < LANG_N; l++)
		check_floor(lang_names[l], pct(t[l].syll_ok, t[l].lines), PH_SYLL_FLOOR);
}
END_TEST

static Suite *lyrics_eval_suite(void)
{
	Suite *s = suite_create("lyrics_eval");
	TCase *tc = tcase_create("eval");
	tcase_add_test(tc, test_eval_spelling);
	tcase_add_test(tc, test_eval_phonemes);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return aiq_test_run(lyrics_eval_suite());
}
