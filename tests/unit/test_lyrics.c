/*
 * Unit tests of the built-in lyrics analyzer (lib/analyzers/lyrics.c).
 *
 * Every expected number below was worked out by hand from the rules in
 * docs/lyrics.md; the comment next to each assertion shows the working.
 */
#include "internal.h"
#include "lyrics_lexicon.h"
#ifdef AIQ_HAVE_ESPEAK
#include "phon.h"
#endif
#include "testutil.h"

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* What the build chose (meson options espeak, stemmer). espeak-ng may still
 * fail to start (no data): the tests then expect what it would report. */
#ifdef AIQ_HAVE_ESPEAK
#define PHONETICS "espeak-ng"
#else
#define PHONETICS "spelling"
#endif
#ifdef AIQ_HAVE_STEMMER
#define STEMMING "snowball"
#else
#define STEMMING "none"
#endif

/* ---- helpers ----------------------------------------------------------- */

static json_t *analyze(const char *text, const char *params)
{
	char *out = NULL;
	int rc = aiq_lyrics_analyze(&out, text, params);
	ck_assert_msg(rc == AIQ_OK, "rc %d: %s", rc, aiq_error_last());
	ck_assert_ptr_nonnull(out);
	json_error_t err;
	json_t *j = json_loads(out, 0, &err);
	ck_assert_msg(j != NULL, "output is not JSON: %s", err.text);
	ck_assert(json_is_object(j));
	aiq_free(out);
	return j;
}

/* Value at a '/'-separated path of object keys and array indexes. */
static json_t *at(json_t *j, const char *path)
{
	char buf[128];
	snprintf(buf, sizeof buf, "%s", path);
	char *save = NULL;
	for (char *k = strtok_r(buf, "/", &save); k; k = strtok_r(NULL, "/", &save)) {
		j = json_is_array(j) ? json_array_get(j, strtoul(k, NULL, 10))
		                     : json_object_get(j, k);
		ck_assert_msg(j != NULL, "no '%s' in path %s", k, path);
	}
	return j;
}

static json_int_t ival(json_t *j, const char *path)
{
	json_t *v = at(j, path);
	ck_assert_msg(json_is_integer(v), "%s is not an integer", path);
	return json_integer_value(v);
}

static double rval(json_t *j, const char *path)
{
	json_t *v = at(j, path);
	ck_assert_msg(json_is_real(v), "%s is not a real", path);
	return json_real_value(v);
}

static const char *sval(json_t *j, const char *path)
{
	json_t *v = at(j, path);
	ck_assert_msg(json_is_string(v), "%s is not a string", path);
	return json_string_value(v);
}

/* Compact JSON text of the value at `path`, compared with `want`. */
static void assert_json(json_t *j, const char *path, const char *want)
{
	char *got = json_dumps(at(j, path), JSON_COMPACT | JSON_ENCODE_ANY);
	ck_assert_ptr_nonnull(got);
	ck_assert_msg(strcmp(got, want) == 0, "%s: got %s, want %s", path, got, want);
	free(got);
}

/* Reals in the output are rounded to 4 decimals, so compare at 1e-9. */
#define ck_assert_real4(got, want) ck_assert_double_eq_tol((got), (want), 1e-9)

static json_int_t syllables_of(const char *word)
{
	json_t *j = analyze(word, NULL);
	json_int_t n = ival(j, "syllable_count");
	json_decref(j);
	return n;
}

static void assert_scheme(const char *text, const char *want)
{
	json_t *j = analyze(text, NULL);
	assert_json(j, "rhyme/rhyme_scheme", want);
	json_decref(j);
}

static void assert_fails(const char *text, const char *params, int code)
{
	static char sentinel[] = "unchanged";
	char *out = sentinel;
	int rc = aiq_lyrics_analyze(&out, text, params);
	ck_assert_int_eq(rc, code);
	ck_assert_ptr_null(out);
	ck_assert_str_ne(aiq_error_last(), "");
}

/* ---- counts ------------------------------------------------------------ */

START_TEST(test_empty)
{
	/* No lines: every count is zero and every list empty; also pins the
	 * key order. */
	char *out = NULL;
	ck_assert_int_eq(aiq_lyrics_analyze(&out, "", NULL), AIQ_OK);
	ck_assert_str_eq(
	        out,
	        "{\"line_count\":0,\"stanza_count\":0,\"word_count\":0,\"unique_word_count\":0,"
	        "\"lexical_diversity\":0.0,\"char_count\":0,\"syllable_count\":0,"
	        "\"avg_words_per_line\":0.0,\"avg_syllables_per_word\":0.0,"
	        "\"rhyme\":{\"rhyme_scheme\":[],\"rhyme_pairs\":0,\"adjacent_pairs\":0,"
	        "\"alternating_pairs\":0,\"rhyming_lines\":0,\"rhyme_density\":0.0,"
	        "\"pairs\":[],\"perfect_pairs\":0,\"slant_pairs\":0,\"multis\":0,"
	        "\"internal_rhymes\":0},"
	        "\"flow\":{\"syllables_per_line\":[],\"mean\":0.0,\"variance\":0.0},"
	        "\"hooks\":[],\"hook_count\":0,\"hook_ratio\":0.0,\"top_words\":[],"
	        "\"sentiment\":{\"score\":0.0,\"label\":\"neutral\",\"positive\":0,"
	        "\"negative\":0,\"negated\":0},\"language\":\"unknown\","
	        "\"letters\":{\"latin\":0,\"cyrillic\":0,\"other\":0},"
	        "\"phonetics\":\"" PHONETICS "\",\"stemming\":\"" STEMMING "\"}");
	aiq_free(out);

	/* Blank lines, punctuation and a section label hold no words. */
	json_t *j = analyze("\n  \n...\n[Chorus]\n", NULL);
	ck_assert_int_eq(ival(j, "line_count"), 0);
	ck_assert_int_eq(ival(j, "word_count"), 0);
	ck_assert_int_eq(ival(j, "stanza_count"), 0);
	/* Code points except line breaks: "  " 2 + "..." 3 + "[Chorus]" 8. */
	ck_assert_int_eq(ival(j, "char_count"), 13);
	json_decref(j);
}
END_TEST

START_TEST(test_basic_counts)
{
	json_t *j = analyze("Hello world\nhello, World!\n\nGoodbye moon", NULL);
	/* Three lines with words in two stanzas (the blank line splits). */
	ck_assert_int_eq(ival(j, "line_count"), 3);
	ck_assert_int_eq(ival(j, "stanza_count"), 2);
	/* hello world hello world goodbye moon: 6 words, 4 distinct. */
	ck_assert_int_eq(ival(j, "word_count"), 6);
	ck_assert_int_eq(ival(j, "unique_word_count"), 4);
	ck_assert_real4(rval(j, "lexical_diversity"), 0.6667); /* 4/6 */
	/* 11 + 13 + 0 + 12 code points; the three \n are not counted. */
	ck_assert_int_eq(ival(j, "char_count"), 36);
	ck_assert_real4(rval(j, "avg_words_per_line"), 2.0); /* 6/3 */
	/* hello 2 (e,o), world 1, hello 2, world 1, goodbye 2 (oo,ye: the
	 * last group is "ye", not a lone e, so nothing is silent), moon 1. */
	ck_assert_int_eq(ival(j, "syllable_count"), 9);
	ck_assert_real4(rval(j, "avg_syllables_per_word"), 1.5);
	/* "hello world" twice out of 3 lines. */
	assert_json(j, "hooks", "[{\"line\":\"hello world\",\"count\":2}]");
	ck_assert_int_eq(ival(j, "hook_count"), 1);
	ck_assert_real4(rval(j, "hook_ratio"), 0.6667);
	/* world/world rhyme (identical words do), moon stands alone. */
	assert_json(j, "rhyme/rhyme_scheme", "[\"AA\",\"A\"]");
	ck_assert_int_eq(ival(j, "rhyme/adjacent_pairs"), 1);
	ck_assert_int_eq(ival(j, "rhyme/rhyming_lines"), 2);
	ck_assert_real4(rval(j, "rhyme/rhyme_density"), 0.6667);
	/* Ties on count go alphabetical: hello < world, goodbye < moon. */
	assert_json(j, "top_words",
	            "[{\"word\":\"hello\",\"count\":2},{\"word\":\"world\",\"count\":2},"
	            "{\"word\":\"goodbye\",\"count\":1},{\"word\":\"moon\",\"count\":1}]");
	/* goodbye is the only lexicon word, a negative one. */
	ck_assert_int_eq(ival(j, "sentiment/negative"), 1);
	ck_assert_real4(rval(j, "sentiment/score"), -1.0);
	ck_assert_str_eq(sval(j, "sentiment/label"), "negative");
	ck_assert_str_eq(sval(j, "language"), "en");
	ck_assert_int_eq(ival(j, "letters/latin"), 31);
	json_decref(j);
}
END_TEST

START_TEST(test_words_and_apostrophes)
{
	/* don't, don’t (U+2019) and DON'T are one word "don't". */
	json_t *j = analyze("Don't don\xe2\x80\x99t DON'T", NULL);
	ck_assert_int_eq(ival(j, "word_count"), 3);
	ck_assert_int_eq(ival(j, "unique_word_count"), 1);
	assert_json(j, "top_words", "[]"); /* don't is a stop word */
	json_decref(j);

	/* Edge apostrophes are not kept: 'cause → cause, lovin' → lovin.
	 * Digits and hyphens separate words: rock-n-roll is rock, n, roll
	 * and "24" is no word at all; n has one letter, so is no content word. */
	j = analyze("'cause lovin' rock-n-roll 24", NULL);
	ck_assert_int_eq(ival(j, "word_count"), 5);
	assert_json(j, "top_words",
	            "[{\"word\":\"cause\",\"count\":1},{\"word\":\"lovin\",\"count\":1},"
	            "{\"word\":\"rock\",\"count\":1},{\"word\":\"roll\",\"count\":1}]");
	json_decref(j);

	/* A stress mark (U+0301) stays inside the word and is dropped from its
	 * form: за́мок = замок. char_count: з а ́ м о к (6) + space + 5 + x = 13,
	 * the \r\n not counted. */
	j = analyze("за\xcc\x81мок замок\r\nx", NULL);
	ck_assert_int_eq(ival(j, "unique_word_count"), 2);
	ck_assert_int_eq(ival(j, "line_count"), 2);
	ck_assert_int_eq(ival(j, "char_count"), 13);
	assert_json(j, "top_words", "[{\"word\":\"замок\",\"count\":2}]");
	json_decref(j);

	/* A leading byte order mark is not a character. */
	j = analyze("\xef\xbb\xbfhi", NULL);
	ck_assert_int_eq(ival(j, "char_count"), 2);
	ck_assert_int_eq(ival(j, "word_count"), 1);
	json_decref(j);
}
END_TEST

START_TEST(test_case_folding)
{
	/* Cyrillic uppercase folds to lowercase without any locale. */
	json_t *j = analyze("ПРИВЕТ Привет привет", NULL);
	ck_assert_int_eq(ival(j, "unique_word_count"), 1);
	assert_json(j, "top_words", "[{\"word\":\"привет\",\"count\":3}]");
	json_decref(j);

	/* ё and е are one letter (Ё too), and words are shown with е. */
	j = analyze("Ёлка ёлка елка\nЁЖ ёж", NULL);
	ck_assert_int_eq(ival(j, "word_count"), 5);
	ck_assert_int_eq(ival(j, "unique_word_count"), 2);
	assert_json(j, "top_words",
	            "[{\"word\":\"елка\",\"count\":3},{\"word\":\"еж\",\"count\":2}]");
	json_decref(j);

	/* Latin-1 and Greek fold as well: ÉTÉ = été, ΛΟΓΟΣ = λογοσ. */
	j = analyze("ÉTÉ été ΛΟΓΟΣ λογοσ", NULL);
	ck_assert_int_eq(ival(j, "unique_word_count"), 2);
	json_decref(j);

	/* Hooks compare folded lines without punctuation. */
	j = analyze("МОРЕ, море!\nморе море", NULL);
	assert_json(j, "hooks", "[{\"line\":\"море море\",\"count\":2}]");
	json_decref(j);
}
END_TEST

/* ---- syllables --------------------------------------------------------- */

START_TEST(test_syllables_english)
{
	ck_assert_int_eq(syllables_of("night"), 1);     /* i */
	ck_assert_int_eq(syllables_of("beautiful"), 3); /* eau, i, u */
	ck_assert_int_eq(syllables_of("little"), 2);    /* i, e: consonant + le is kept */
	ck_assert_int_eq(syllables_of("love"), 1);      /* o, e: silent final e */
	ck_assert_int_eq(syllables_of("loves"), 1);     /* silent e before s */
	ck_assert_int_eq(syllables_of("loved"), 1);     /* silent e before d */
	ck_assert_int_eq(syllables_of("wanted"), 2);    /* e after t is spoken */
	ck_assert_int_eq(syllables_of("kisses"), 2);    /* e after s is spoken */
	ck_assert_int_eq(syllables_of("tables"), 2);    /* consonant + les */
	ck_assert_int_eq(syllables_of("smiles"), 1);    /* i, e silent */
	ck_assert_int_eq(syllables_of("crying"), 2);    /* y before i closes: y, i */
	ck_assert_int_eq(syllables_of("beyond"), 2);    /* ey, o */
	ck_assert_int_eq(syllables_of("you"), 1);       /* initial y is a consonant: ou */
	ck_assert_int_eq(syllables_of("the"), 1);       /* one group, nothing silent */
	ck_assert_int_eq(syllables_of("don't"), 1);     /* apostrophe ignored: o */
	ck_assert_int_eq(syllables_of("hmm"), 1);       /* no vowel: at least 1 */
#ifdef AIQ_HAVE_ESPEAK
	ck_assert_int_eq(syllables_of("desire"), 3); /* espeak-ng: dɪ zˈaɪ ə */
#else
	ck_assert_int_eq(syllables_of("desire"), 2); /* e, i, e: final e silent */
#endif
}
END_TEST

START_TEST(test_syllables_russian)
{
	ck_assert_int_eq(syllables_of("любовь"), 2);       /* ю, о */
	ck_assert_int_eq(syllables_of("здравствуйте"), 3); /* а, у, е */
	ck_assert_int_eq(syllables_of("ещё"), 2);          /* е, ё */
	ck_assert_int_eq(syllables_of("молоко"), 3);       /* о, о, о */
	ck_assert_int_eq(syllables_of("ЁЛКА"), 2);         /* ё, а (uppercase) */
	ck_assert_int_eq(syllables_of("в"), 0);            /* no vowel, no syllable */
	/* Averages: "я в лесу" = 1 + 0 + 2 = 3 over 3 words. */
	json_t *j = analyze("я в лесу", NULL);
	ck_assert_real4(rval(j, "avg_syllables_per_word"), 1.0);
	json_decref(j);
}
END_TEST

/* ---- rhyme ------------------------------------------------------------- */

START_TEST(test_rhyme_pairs)
{
	/* night/light: both keys "ight". */
	assert_scheme("We walk in the night\nInto the light", "[\"AA\"]");
	/* любовь/кровь: from the last vowel, "овь". */
	assert_scheme("Моя любовь\nГорячая кровь", "[\"AA\"]");
	/* fire/desire: the final e is silent, so the key starts one vowel
	 * group earlier: "ire". */
	assert_scheme("Into the fire\nOf my desire", "[\"AA\"]");
	/* time/rhyme: y counts as i in keys, "ime". */
	assert_scheme("Give it time\nFind the rhyme", "[\"AA\"]");
	/* мама/рама: a word ending in a vowel keeps the letter before it,
	 * "ма"; она gives "на", so мама/она do not rhyme. */
	assert_scheme("мама\nрама", "[\"AA\"]");
	assert_scheme("мама\nона", "[\"AB\"]");
	/* ё = е in rhyme keys too: моё and своё are folded to мое and свое,
	 * which end in a vowel preceded by о, so both keys are "ое". */
	assert_scheme("Сердце моё\nСердце своё", "[\"AA\"]");
}
END_TEST

START_TEST(test_rhyme_schemes)
{
	/* night light "ight", stream dream "eam": ABAB, two alternating pairs
	 * (1-3, 2-4), no adjacent ones; all four lines rhyme. */
	json_t *j = analyze("At night\nBy the stream\nIn the light\nOf a dream", NULL);
	assert_json(j, "rhyme/rhyme_scheme", "[\"ABAB\"]");
	ck_assert_int_eq(ival(j, "rhyme/adjacent_pairs"), 0);
	ck_assert_int_eq(ival(j, "rhyme/alternating_pairs"), 2);
	ck_assert_int_eq(ival(j, "rhyme/rhyme_pairs"), 2);
	ck_assert_int_eq(ival(j, "rhyme/rhyming_lines"), 4);
	ck_assert_real4(rval(j, "rhyme/rhyme_density"), 1.0);
	json_decref(j);

	/* cat hat "at", dog fog "og": AABB, two adjacent pairs. */
	j = analyze("cat\nhat\ndog\nfog", NULL);
	assert_json(j, "rhyme/rhyme_scheme", "[\"AABB\"]");
	ck_assert_int_eq(ival(j, "rhyme/adjacent_pairs"), 2);
	ck_assert_int_eq(ival(j, "rhyme/alternating_pairs"), 0);
	json_decref(j);

	/* AAAA: three adjacent pairs; (1,3) and (2,4) are not alternating
	 * because the line between rhymes too. */
	j = analyze("cat\nhat\nmat\nbat", NULL);
	ck_assert_int_eq(ival(j, "rhyme/adjacent_pairs"), 3);
	ck_assert_int_eq(ival(j, "rhyme/alternating_pairs"), 0);
	json_decref(j);

	/* Stanzas split at blank lines and labels, letters restart in each:
	 * blue/true "ue". */
	j = analyze("night\nlight\n\nday\nway\n[Chorus]\nblue\ntrue", NULL);
	assert_json(j, "rhyme/rhyme_scheme", "[\"AA\",\"AA\",\"AA\"]");
	ck_assert_int_eq(ival(j, "stanza_count"), 3);
	ck_assert_int_eq(ival(j, "rhyme/adjacent_pairs"), 3);
	json_decref(j);

	/* No pair across a stanza break: light / night are in different
	 * stanzas. */
	j = analyze("light\n\nnight", NULL);
	ck_assert_int_eq(ival(j, "rhyme/rhyme_pairs"), 0);
	ck_assert_int_eq(ival(j, "rhyme/rhyming_lines"), 0);
	json_decref(j);

	/* cat and hat are 4 lines apart: same letter in the scheme, but
	 * outside the 3-line window, so no rhyming lines. */
	j = analyze("cat\ndog\nsun\npen\nhat", NULL);
	assert_json(j, "rhyme/rhyme_scheme", "[\"ABCDA\"]");
	ck_assert_int_eq(ival(j, "rhyme/rhyming_lines"), 0);
	ck_assert_real4(rval(j, "rhyme/rhyme_density"), 0.0);
	json_decref(j);

	/* ABBA: the A lines are 3 apart, inside the window: 4 rhyming lines,
	 * one adjacent pair (2-3), no alternating one. */
	j = analyze("cat\ndog\nfog\nhat", NULL);
	assert_json(j, "rhyme/rhyme_scheme", "[\"ABBA\"]");
	ck_assert_int_eq(ival(j, "rhyme/rhyming_lines"), 4);
	ck_assert_int_eq(ival(j, "rhyme/rhyme_pairs"), 1);
	json_decref(j);
}
END_TEST

/* ---- hooks ------------------------------------------------------------- */

START_TEST(test_hooks)
{
	/* "a line" 3 times, "b line" twice, "c c" once: sorted by count. */
	json_t *j = analyze("b line\nA line!\na line\nb line\nc c\na, line", NULL);
	assert_json(j, "hooks",
	            "[{\"line\":\"a line\",\"count\":3},{\"line\":\"b line\",\"count\":2}]");
	ck_assert_int_eq(ival(j, "hook_count"), 2);
	ck_assert_real4(rval(j, "hook_ratio"), 0.8333); /* (3 + 2) / 6 */
	json_decref(j);

	/* Equal counts: first appearance first. */
	j = analyze("x y\nz w\nz w\nx y", NULL);
	assert_json(j, "hooks", "[{\"line\":\"x y\",\"count\":2},{\"line\":\"z w\",\"count\":2}]");
	ck_assert_real4(rval(j, "hook_ratio"), 1.0);
	json_decref(j);

	/* Spacing and punctuation do not matter: "Hey,  you!" = "hey you". */
	j = analyze("Hey,  you!\nhey you", NULL);
	assert_json(j, "hooks", "[{\"line\":\"hey you\",\"count\":2}]");
	json_decref(j);
}
END_TEST

/* ---- top words --------------------------------------------------------- */

START_TEST(test_top_words)
{
	/* the, and are stop words; dog 2, cat 1. */
	json_t *j = analyze("The cat and the dog\nthe dog", NULL);
	assert_json(j, "top_words",
	            "[{\"word\":\"dog\",\"count\":2},{\"word\":\"cat\",\"count\":1}]");
	json_decref(j);

	/* Ties are alphabetical; Russian stop words (и, в, я) are left out too. */
	j = analyze("zebra apple mango и в я", NULL);
	assert_json(j, "top_words",
	            "[{\"word\":\"apple\",\"count\":1},{\"word\":\"mango\",\"count\":1},"
	            "{\"word\":\"zebra\",\"count\":1}]");
	json_decref(j);

	/* top_words limits the list. */
	j = analyze("zebra apple mango", "{\"top_words\": 2}");
	assert_json(j, "top_words",
	            "[{\"word\":\"apple\",\"count\":1},{\"word\":\"mango\",\"count\":1}]");
	json_decref(j);
	j = analyze("zebra apple mango", "{\"top_words\": 0, \"unrelated\": true}");
	assert_json(j, "top_words", "[]");
	json_decref(j);

	/* Default is 10: 12 distinct words give 10 entries. */
	j = analyze("aa bb cc dd ee ff gg hh ii jj kk ll", "{}");
	ck_assert_uint_eq(json_array_size(at(j, "top_words")), 10);
	json_decref(j);
}
END_TEST

/* ---- sentiment --------------------------------------------------------- */

START_TEST(test_sentiment)
{
	json_t *j = analyze("I love you", NULL);
	ck_assert_int_eq(ival(j, "sentiment/positive"), 1);
	ck_assert_real4(rval(j, "sentiment/score"), 1.0);
	ck_assert_str_eq(sval(j, "sentiment/label"), "positive");
	json_decref(j);

	/* not flips love: one negative hit, flipped. */
	j = analyze("I do not love you", NULL);
	ck_assert_int_eq(ival(j, "sentiment/positive"), 0);
	ck_assert_int_eq(ival(j, "sentiment/negative"), 1);
	ck_assert_int_eq(ival(j, "sentiment/negated"), 1);
	ck_assert_str_eq(sval(j, "sentiment/label"), "negative");
	json_decref(j);

	/* don't (any ...n't) flips hate into a positive hit. */
	j = analyze("I don't hate you", NULL);
	ck_assert_int_eq(ival(j, "sentiment/positive"), 1);
	ck_assert_int_eq(ival(j, "sentiment/negative"), 0);
	json_decref(j);

	/* Russian: не flips люблю. */
	j = analyze("Я не люблю тебя", NULL);
	ck_assert_int_eq(ival(j, "sentiment/negative"), 1);
	ck_assert_int_eq(ival(j, "sentiment/negated"), 1);
	ck_assert_real4(rval(j, "sentiment/score"), -1.0);
	json_decref(j);

	/* The negator reaches 3 words: love is the 4th after not, unflipped;
	 * in the second line it is the 3rd, flipped. Nor does it cross lines. */
	j = analyze("not a b c love\nnot a b love\nnever\nsad", NULL);
	ck_assert_int_eq(ival(j, "sentiment/positive"), 1);
	ck_assert_int_eq(ival(j, "sentiment/negative"), 2); /* flipped love + sad */
	ck_assert_int_eq(ival(j, "sentiment/negated"), 1);
	json_decref(j);

	/* Score (pos - neg) / (pos + neg): love joy sad = (2 - 1) / 3. */
	j = analyze("love joy\nsad", NULL);
	ck_assert_real4(rval(j, "sentiment/score"), 0.3333);
	ck_assert_str_eq(sval(j, "sentiment/label"), "positive"); /* >= 0.25 */
	json_decref(j);
	j = analyze("love sad", NULL);
	ck_assert_real4(rval(j, "sentiment/score"), 0.0);
	ck_assert_str_eq(sval(j, "sentiment/label"), "neutral");
	json_decref(j);
	/* 2 pos 3 neg: -0.2, above -0.25, so still neutral. */
	j = analyze("love joy sad pain tears", NULL);
	ck_assert_real4(rval(j, "sentiment/score"), -0.2);
	ck_assert_str_eq(sval(j, "sentiment/label"), "neutral");
	json_decref(j);

	/* Russian stems cover inflections: любовью (любов-), слёзы (слез-,
	 * ё = е), одиночество (одиночеств-). */
	j = analyze("с любовью\nслёзы и одиночество", NULL);
	ck_assert_int_eq(ival(j, "sentiment/positive"), 1);
	ck_assert_int_eq(ival(j, "sentiment/negative"), 2);
	json_decref(j);
}
END_TEST

/* ---- language ---------------------------------------------------------- */

START_TEST(test_language)
{
	json_t *j = analyze("hello мир", NULL);
	/* 5 Latin, 3 Cyrillic letters: neither reaches 80%, together 100%. */
	ck_assert_str_eq(sval(j, "language"), "mixed");
	ck_assert_int_eq(ival(j, "letters/latin"), 5);
	ck_assert_int_eq(ival(j, "letters/cyrillic"), 3);
	json_decref(j);

	j = analyze("Привет, как дела? ok", NULL); /* 13 Cyrillic, 2 Latin: 87% */
	ck_assert_str_eq(sval(j, "language"), "ru");
	json_decref(j);

	j = analyze("καλημέρα", NULL); /* Greek letters only */
	ck_assert_str_eq(sval(j, "language"), "unknown");
	ck_assert_int_eq(ival(j, "letters/other"), 8);
	ck_assert_int_eq(ival(j, "word_count"), 1);
	json_decref(j);

	j = analyze("12345 !!!", NULL); /* no letters */
	ck_assert_str_eq(sval(j, "language"), "unknown");
	json_decref(j);
}
END_TEST

/* ---- sample files ------------------------------------------------------ */

/* examples/lyrics/ sits two levels above tests/data (AIQ_TEST_DATA). */
static json_t *analyze_sample(const char *name)
{
	char path[256];
	snprintf(path, sizeof path, "../../examples/lyrics/%s", name);
	char *text = aiq_test_read_data(path, NULL);
	json_t *j = analyze(text, NULL);
	free(text);
	return j;
}

static const struct {
	const char *file, *lang, *scheme;
	int lines;
} samples[] = {
        /* The schemes follow from the end words, written to rhyme so:
         * night/light stream/dream, away/today mine/line, rain/vain
         * sail/trail. */
        {"en_paper_boats.txt", "en", "[\"ABAB\",\"ABAB\",\"ABAB\",\"ABAB\"]", 16},
        /* moon/noon clay/away, along/song, bright/night gate/late,
         * pass/glass feet/sweet. */
        {"en_northbound.txt", "en", "[\"ABAB\",\"AA\",\"ABAB\",\"AA\",\"ABAB\"]", 16},
        /* anymore/before cold/told, heart/heart dark/spark, came/same
         * end/pretend. */
        {"en_static_heart.txt", "en", "[\"AABB\",\"ABAB\",\"AABB\",\"ABAB\"]", 16},
        /* огни/одни мгла/берегла; the chorus all ends in -овь; тьму/никому
         * смех/всех. */
        {"ru_zimniy_vokzal.txt", "ru", "[\"AABB\",\"AAAA\",\"AABB\",\"AA\"]", 14},
/* плывут/найдут листва/слова, меня/огня зла/ждала, гроз/мороз
 * один/господин. */
#ifdef AIQ_HAVE_ESPEAK
        /* espeak-ng reads the homograph слова as сло́ва (genitive), so by
         * sound листва / слова do not rhyme: ABAC. */
        {"ru_reka.txt", "ru", "[\"ABAC\",\"ABAB\",\"ABAB\",\"ABAB\"]", 16},
#else
        {"ru_reka.txt", "ru", "[\"ABAB\",\"ABAB\",\"ABAB\",\"ABAB\"]", 16},
#endif
};

START_TEST(test_samples)
{
	json_t *j = analyze_sample(samples[_i].file);
	ck_assert_str_eq(sval(j, "language"), samples[_i].lang);
	ck_assert_int_eq(ival(j, "line_count"), samples[_i].lines);
	assert_json(j, "rhyme/rhyme_scheme", samples[_i].scheme);
	/* Every line was written to rhyme with a neighbour (but for the two
	 * lines of ru_reka.txt that espeak-ng reads apart, above). */
	if (strchr(samples[_i].scheme, 'C'))
		ck_assert_real4(rval(j, "rhyme/rhyme_density"), 14.0 / 16.0);
	else
		ck_assert_real4(rval(j, "rhyme/rhyme_density"), 1.0);
	/* Each song repeats its chorus. */
	ck_assert_int_ge(ival(j, "hook_count"), 1);
	ck_assert_double_gt(rval(j, "hook_ratio"), 0.2);
	ck_assert_double_gt(rval(j, "avg_syllables_per_word"), 1.0);
	ck_assert_double_lt(rval(j, "avg_syllables_per_word"), 2.0);
	ck_assert_uint_eq(json_array_size(at(j, "top_words")), 10);
	json_decref(j);
}
END_TEST

START_TEST(test_sample_details)
{
	/* The chorus of ru_zimniy_vokzal.txt is sung 3 times (twice in the
	 * second stanza, once at the end): both its lines are hooks of count 3,
	 * 6 of 14 lines. вновь appears twice per chorus line: 6 times. */
	json_t *j = analyze_sample("ru_zimniy_vokzal.txt");
	assert_json(j, "hooks",
	            "[{\"line\":\"любовь моя ты как кровь\",\"count\":3},"
	            "{\"line\":\"горишь во мне вновь и вновь\",\"count\":3}]");
	ck_assert_real4(rval(j, "hook_ratio"), 0.4286); /* 6/14 */
	assert_json(j, "top_words/0", "{\"word\":\"вновь\",\"count\":6}");
	json_decref(j);

	/* en_static_heart.txt: "static heart static heart" 4 times, heart and
	 * static 8 times each (alphabetical tie). "not afraid" is negated. */
	j = analyze_sample("en_static_heart.txt");
	assert_json(j, "hooks/0", "{\"line\":\"static heart static heart\",\"count\":4}");
	assert_json(j, "top_words/0", "{\"word\":\"heart\",\"count\":8}");
	assert_json(j, "top_words/1", "{\"word\":\"static\",\"count\":8}");
	ck_assert_int_eq(ival(j, "sentiment/negated"), 1);
	json_decref(j);
}
END_TEST

/* ---- errors ------------------------------------------------------------ */

START_TEST(test_errors)
{
	ck_assert_int_eq(aiq_lyrics_analyze(NULL, "x", NULL), AIQ_EINVAL);
	assert_fails(NULL, NULL, AIQ_EINVAL);
	assert_fails("\xff", NULL, AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "offset 0"));
	assert_fails("ab\xc3", NULL, AIQ_EINVAL); /* truncated sequence */
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "offset 2"));
	assert_fails("\xc0\xaf", NULL, AIQ_EINVAL);     /* overlong '/' */
	assert_fails("\xed\xa0\x80", NULL, AIQ_EINVAL); /* surrogate */

	assert_fails("x", "{", AIQ_EJSON);
	assert_fails("x", "", AIQ_EJSON);
	assert_fails("x", "[]", AIQ_EINVAL);
	assert_fails("x", "42", AIQ_EINVAL);
	assert_fails("x", "null", AIQ_EINVAL);
	assert_fails("x", "{\"top_words\": -1}", AIQ_EINVAL);
	assert_fails("x", "{\"top_words\": 101}", AIQ_EINVAL);
	assert_fails("x", "{\"top_words\": \"5\"}", AIQ_EINVAL);
	assert_fails("x", "{\"top_words\": 2.0}", AIQ_EINVAL);
	assert_fails("x", "{\"top_words\": null}", AIQ_EINVAL);
	ck_assert_ptr_nonnull(strstr(aiq_error_last(), "top_words"));
	json_decref(analyze("x", "{\"top_words\": 100}"));
}
END_TEST

START_TEST(test_size_limit)
{
	size_t mib = 1024 * 1024;
	char *big = malloc(mib + 2);
	ck_assert_ptr_nonnull(big);
	memset(big, 'a', mib + 1);
	big[mib + 1] = '\0';
	assert_fails(big, NULL, AIQ_ETOOBIG);
	/* Exactly 1 MiB is accepted: one word of 1048576 letters. */
	big[mib] = '\0';
	json_t *j = analyze(big, NULL);
	ck_assert_int_eq(ival(j, "word_count"), 1);
	ck_assert_int_eq(ival(j, "char_count"), (json_int_t)mib);
	json_decref(j);
	free(big);
}
END_TEST

/* ---- robustness and speed ---------------------------------------------- */

static double seconds_since(const struct timespec *t0)
{
	struct timespec t1;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	return (double)(t1.tv_sec - t0->tv_sec) + (double)(t1.tv_nsec - t0->tv_nsec) / 1e9;
}

/* Analyze `text` and check it takes well under the unit-test timeout even
 * in sanitizer builds: a quadratic step on 1 MiB would take minutes (hours
 * under valgrind). Under valgrind (scripts/valgrind.sh sets
 * AIQ_TEST_SERIAL_THREADS) espeak-ng, which is not built in this tree, runs
 * some 250 times slower than natively (6.5 ms a word against 25 us), so the
 * budget there is 60 s. */
static json_t *timed(const char *text)
{
	double budget = getenv("AIQ_TEST_SERIAL_THREADS") ? 60.0 : 20.0;
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	json_t *j = analyze(text, NULL);
	double s = seconds_since(&t0);
	ck_assert_msg(s < budget, "took %.1f s (budget %.0f s)", s, budget);
	return j;
}

START_TEST(test_large_inputs)
{
	size_t n = 1024 * 1024;
	char *t = malloc(n + 1);
	ck_assert_ptr_nonnull(t);

	/* 524288 one-letter lines "a": one stanza, one hook, one rhyme key. */
	for (size_t i = 0; i < n; i += 2)
		t[i] = 'a', t[i + 1] = '\n';
	t[n] = '\0';
	json_t *j = timed(t);
	ck_assert_int_eq(ival(j, "line_count"), 524288);
	ck_assert_int_eq(ival(j, "hook_count"), 1);
	ck_assert_int_eq(ival(j, "rhyme/rhyming_lines"), 524288);
	json_decref(j);

	/* Many distinct words: base-26 numerals of 4 letters, 5 bytes each. */
	size_t p = 0;
	for (unsigned k = 0; p + 5 <= n; k++) {
		unsigned v = k;
		for (int d = 0; d < 4; d++, v /= 26)
			t[p++] = (char)('a' + v % 26);
		t[p++] = (k % 8 == 7) ? '\n' : ' ';
	}
	t[p] = '\0';
	j = timed(t);
	ck_assert_int_eq(ival(j, "word_count"), (json_int_t)(p / 5));
	ck_assert_int_eq(ival(j, "unique_word_count"), (json_int_t)(p / 5)); /* < 26^4 */
	json_decref(j);

	/* Pseudo-random valid UTF-8 from a mix of ASCII, Cyrillic, marks,
	 * apostrophes and brackets: must not crash, counts must add up. */
	static const char *const atoms[] = {"a",
	                                    "Я",
	                                    "ё",
	                                    "'",
	                                    "\xe2\x80\x99",
	                                    "\xcc\x81",
	                                    "[",
	                                    "]",
	                                    " ",
	                                    "\n",
	                                    "\r",
	                                    "-",
	                                    "9",
	                                    "\xe4\xb8\xad",
	                                    "Z",
	                                    "\xf0\x9f\x8e\xb5",
	                                    "n't",
	                                    "не",
	                                    "love"};
	uint64_t x = 88172645463325252ULL;
	p = 0;
	for (;;) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		const char *a = atoms[x % (sizeof atoms / sizeof atoms[0])];
		size_t l = strlen(a);
		if (p + l > n)
			break;
		memcpy(t + p, a, l);
		p += l;
	}
	t[p] = '\0';
	j = timed(t);
	ck_assert_int_le(ival(j, "unique_word_count"), ival(j, "word_count"));
	ck_assert_int_le(ival(j, "rhyme/rhyming_lines"), ival(j, "line_count"));
	json_decref(j);
	free(t);
}
END_TEST

struct thread_arg {
	const char *text;
	char *out;
};

static void *thread_main(void *p)
{
	struct thread_arg *a = p;
	for (int i = 0; i < 50; i++) {
		char *out = NULL;
		if (aiq_lyrics_analyze(&out, a->text, "{\"top_words\": 5}") != AIQ_OK)
			return NULL;
		if (a->out == NULL) {
			a->out = out;
		} else {
			if (strcmp(out, a->out) != 0) {
				aiq_free(out);
				aiq_free(a->out);
				a->out = NULL;
				return NULL;
			}
			aiq_free(out);
		}
	}
	return p;
}

START_TEST(test_threads)
{
	/* Eight threads on the same text get the same answer every time. */
	char *text = aiq_test_read_data("../../examples/lyrics/ru_reka.txt", NULL);
	struct thread_arg args[8];
	pthread_t th[8];
	for (int i = 0; i < 8; i++) {
		args[i] = (struct thread_arg){text, NULL};
		ck_assert_int_eq(pthread_create(&th[i], NULL, thread_main, &args[i]), 0);
	}
	for (int i = 0; i < 8; i++) {
		void *r = NULL;
		pthread_join(th[i], &r);
		ck_assert_ptr_nonnull(r);
	}
	for (int i = 0; i < 8; i++) {
		ck_assert_ptr_nonnull(args[i].out);
		ck_assert_str_eq(args[i].out, args[0].out);
	}
	for (int i = 0; i < 8; i++)
		aiq_free(args[i].out);
	free(text);
}
END_TEST

/* ---- by sound (espeak-ng), stems (libstemmer), Unicode (utf8proc) ------ */

#define SPELLING "{\"phonetics\":\"spelling\"}"

START_TEST(test_rhyme_by_sound)
{
	/* A hymn: me / see and heart / apart rhyme by sound, not by spelling
	 * (keys e / ee, eart / art). */
	const char *hymn = "You came to me\nWith open heart\nBeside the sea\nWe fell apart\n";
	json_t *j = analyze(hymn, NULL);
	ck_assert_str_eq(sval(j, "phonetics"), PHONETICS);
#ifdef AIQ_HAVE_ESPEAK
	assert_json(j, "rhyme/rhyme_scheme", "[\"ABAB\"]");
	assert_json(j, "rhyme/pairs",
	            "[{\"lines\":[0,2],\"type\":\"perfect\",\"vowels\":1},"
	            "{\"lines\":[1,3],\"type\":\"perfect\",\"vowels\":1}]");
	ck_assert_int_eq(ival(j, "rhyme/perfect_pairs"), 2);
#else
	assert_json(j, "rhyme/rhyme_scheme", "[\"ABCD\"]");
	assert_json(j, "rhyme/pairs", "[]");
#endif
	json_decref(j);
	/* The spelling rules on request, in every build. */
	j = analyze(hymn, SPELLING);
	ck_assert_str_eq(sval(j, "phonetics"), "spelling");
	assert_json(j, "rhyme/rhyme_scheme", "[\"ABCD\"]");
	json_decref(j);

	/* AABB: me / sea, night / light. */
#ifdef AIQ_HAVE_ESPEAK
	assert_scheme("Lord, stay with me\nAs I kneel by the sea\nThrough the dark night\n"
	              "You give me light\n",
	              "[\"AABB\"]");
#endif
}
END_TEST

START_TEST(test_rhyme_kinds)
{
	/* ocean / motion: perfect, and the vowels before match too (a multi). */
	json_t *j = analyze("I sail the ocean\nI feel the motion\n", NULL);
#ifdef AIQ_HAVE_ESPEAK
	assert_json(j, "rhyme/pairs/0/type", "\"perfect\"");
	ck_assert_int_ge(ival(j, "rhyme/pairs/0/vowels"), 2);
	ck_assert_int_eq(ival(j, "rhyme/multis"), 1);
#else
	/* Spelling: keys ean / ion. */
	ck_assert_int_eq(ival(j, "rhyme/multis"), 0);
	assert_json(j, "rhyme/pairs", "[]");
#endif
	json_decref(j);

	/* hand / plan: same vowel, a coda with one consonant more: slant. */
	j = analyze("Take my hand\nThat's the plan\n", NULL);
#ifdef AIQ_HAVE_ESPEAK
	assert_json(j, "rhyme/rhyme_scheme", "[\"AA\"]");
	assert_json(j, "rhyme/pairs/0/type", "\"slant\"");
	ck_assert_int_eq(ival(j, "rhyme/slant_pairs"), 1);
#else
	assert_json(j, "rhyme/rhyme_scheme", "[\"AB\"]");
#endif
	json_decref(j);

	/* crowd / loud inside one line: an internal rhyme (and is a stop word). */
	j = analyze("Mic in my hand and the crowd is loud\n", NULL);
#ifdef AIQ_HAVE_ESPEAK
	ck_assert_int_eq(ival(j, "rhyme/internal_rhymes"), 1);
#else
	ck_assert_int_eq(ival(j, "rhyme/internal_rhymes"), 0); /* owd / oud */
#endif
	json_decref(j);
	/* By spelling: night / light. */
	j = analyze("Into the night we fly to the light\n", SPELLING);
	ck_assert_int_eq(ival(j, "rhyme/internal_rhymes"), 1);
	json_decref(j);
}
END_TEST

START_TEST(test_flow)
{
	/* Syllables per line 3 and 2: mean 2.5, variance 0.25, in both modes. */
	for (int k = 0; k < 2; k++) {
		json_t *j = analyze("one two three\nfour five\n", k ? SPELLING : NULL);
		assert_json(j, "flow/syllables_per_line", "[3,2]");
		ck_assert_real4(rval(j, "flow/mean"), 2.5);
		ck_assert_real4(rval(j, "flow/variance"), 0.25);
		json_decref(j);
	}
}
END_TEST

START_TEST(test_stems)
{
	json_t *j = analyze("love loving loved\nloves\n", NULL);
	ck_assert_str_eq(sval(j, "stemming"), STEMMING);
#ifdef AIQ_HAVE_STEMMER
	/* One stem: the count of the group under its smallest form. */
	assert_json(j, "top_words", "[{\"word\":\"love\",\"count\":4}]");
#else
	ck_assert_uint_eq(json_array_size(at(j, "top_words")), 4);
#endif
	json_decref(j);

	j = analyze("песня песни песню", NULL);
#ifdef AIQ_HAVE_STEMMER
	assert_json(j, "top_words", "[{\"word\":\"песни\",\"count\":3}]");
#else
	ck_assert_uint_eq(json_array_size(at(j, "top_words")), 3);
#endif
	json_decref(j);

	/* Hooks: lines with the same stems are one hook, shown as first sung. */
	j = analyze("I keep loving you\nI keep loved you\n", NULL);
#ifdef AIQ_HAVE_STEMMER
	assert_json(j, "hooks", "[{\"line\":\"i keep loving you\",\"count\":2}]");
#else
	assert_json(j, "hooks", "[]");
#endif
	json_decref(j);
}
END_TEST

START_TEST(test_unicode_normalization)
{
	/* NFKC and full case folding: the ligature ﬁ is f+i, fullwidth letters
	 * are ASCII, ß folds to ss. */
	json_t *j = analyze("\xef\xac\x81re fire \xef\xbc\xa6IRE\nSTRASSE stra\xc3\x9f"
	                    "e",
	                    NULL);
#ifdef AIQ_HAVE_UTF8PROC
	ck_assert_int_eq(ival(j, "word_count"), 5);
	assert_json(j, "top_words",
	            "[{\"word\":\"fire\",\"count\":3},{\"word\":\"strasse\",\"count\":2}]");
#else
	/* The built-in tables know neither: ﬁ and Ｆ are no letters. */
	ck_assert_int_eq(ival(j, "unique_word_count"), 5);
#endif
	json_decref(j);

	/* Letters of any script are letters (Thai ก and า), and a combining
	 * mark stays in its word (a + U+0301). */
	j = analyze("\xe0\xb8\x81\xe0\xb8\xb2 a\xcc\x81\n", NULL);
#ifdef AIQ_HAVE_UTF8PROC
	ck_assert_int_eq(ival(j, "word_count"), 2);
	ck_assert_int_eq(ival(j, "letters/other"), 2);
	ck_assert_int_eq(ival(j, "letters/latin"), 1);
	assert_json(j, "top_words", "[{\"word\":\"\xe0\xb8\x81\xe0\xb8\xb2\",\"count\":1}]");
#endif
	json_decref(j);

	/* Invalid params.phonetics. */
	assert_fails("la", "{\"phonetics\":\"ipa\"}", AIQ_EINVAL);
	assert_fails("la", "{\"phonetics\":1}", AIQ_EINVAL);
}
END_TEST

#ifdef AIQ_HAVE_ESPEAK
START_TEST(test_phon_parse)
{
	/* bˈaɪtə: b, aɪ (one nucleus, primary stress), t, ə. */
	aiq__phone p[8];
	size_t n = aiq__phon_parse(p, 8,
	                           "b\xcb\x88"
	                           "a\xc9\xaat\xc9\x99");
	ck_assert_uint_eq(n, 4);
	ck_assert_str_eq(p[1].sym, "a\xc9\xaa");
	ck_assert_int_eq(p[1].vowel, 1);
	ck_assert_int_eq(p[1].stress, 2);
	ck_assert_uint_eq(aiq__phon_syllables(p, n), 2);
	ck_assert_uint_eq(aiq__phon_rhyme_start(p, n), 1);
	/* Room for two: the last two, in order; "(en)" switches are dropped. */
	n = aiq__phon_parse(p, 2,
	                    "(en)b\xcb\x88"
	                    "a\xc9\xaat\xc9\x99(ru)");
	ck_assert_uint_eq(n, 2);
	ck_assert_str_eq(p[0].sym, "t");
	ck_assert_str_eq(p[1].sym, "\xc9\x99");
	/* The voice matters: Cyrillic through the Russian voice. */
	n = aiq__phon_word(p, 8, "кровь", AIQ_PHON_RU);
	ck_assert_uint_eq(aiq__phon_syllables(p, n), 1);

	/* A word read before comes from the cache, with the same phones. */
	size_t hits0, misses0, hits1, misses1;
	aiq__phon_cache_stats(&hits0, &misses0);
	aiq__phone again[8];
	ck_assert_uint_eq(aiq__phon_word(again, 8, "кровь", AIQ_PHON_RU), n);
	ck_assert_mem_eq(again, p, n * sizeof p[0]);
	aiq__phon_cache_stats(&hits1, &misses1);
	ck_assert_uint_eq(hits1, hits0 + 1);
	ck_assert_uint_eq(misses1, misses0);
	/* Too long for a slot: read by espeak-ng every time, still right. */
	const char *longw = "antidisestablishmentarianismantidisestablishment";
	aiq__phone l1[64], l2[64];
	size_t n1 = aiq__phon_word(l1, 64, longw, AIQ_PHON_EN);
	ck_assert_uint_gt(aiq__phon_syllables(l1, n1), 10);
	ck_assert_uint_eq(aiq__phon_word(l2, 64, longw, AIQ_PHON_EN), n1);
	ck_assert_mem_eq(l1, l2, n1 * sizeof l1[0]);
	aiq__phon_cache_stats(&hits0, &misses0);
	ck_assert_uint_eq(hits0, hits1);
}
END_TEST
#endif

/* ---- word lists -------------------------------------------------------- */

START_TEST(test_lexicon_sorted)
{
	/* bsearch() needs strcmp order, without duplicates. */
	size_t n = sizeof aiq__lyrics_stop_words / sizeof aiq__lyrics_stop_words[0];
	for (size_t i = 1; i < n; i++)
		ck_assert_msg(strcmp(aiq__lyrics_stop_words[i - 1], aiq__lyrics_stop_words[i]) < 0,
		              "stop words out of order at %s", aiq__lyrics_stop_words[i]);
	n = sizeof aiq__lyrics_negators / sizeof aiq__lyrics_negators[0];
	for (size_t i = 1; i < n; i++)
		ck_assert(strcmp(aiq__lyrics_negators[i - 1], aiq__lyrics_negators[i]) < 0);
	n = sizeof aiq__lyrics_sentiment_words / sizeof aiq__lyrics_sentiment_words[0];
	for (size_t i = 1; i < n; i++)
		ck_assert_msg(strcmp(aiq__lyrics_sentiment_words[i - 1].word,
		                     aiq__lyrics_sentiment_words[i].word) < 0,
		              "sentiment words out of order at %s",
		              aiq__lyrics_sentiment_words[i].word);
}
END_TEST

static Suite *lyrics_suite(void)
{
	Suite *s = suite_create("lyrics");
	TCase *tc = tcase_create("core");
	tcase_add_test(tc, test_empty);
	tcase_add_test(tc, test_basic_counts);
	tcase_add_test(tc, test_words_and_apostrophes);
	tcase_add_test(tc, test_case_folding);
	tcase_add_test(tc, test_syllables_english);
	tcase_add_test(tc, test_syllables_russian);
	tcase_add_test(tc, test_rhyme_pairs);
	tcase_add_test(tc, test_rhyme_schemes);
	tcase_add_test(tc, test_hooks);
	tcase_add_test(tc, test_top_words);
	tcase_add_test(tc, test_sentiment);
	tcase_add_test(tc, test_language);
	tcase_add_loop_test(tc, test_samples, 0, (int)(sizeof samples / sizeof samples[0]));
	tcase_add_test(tc, test_sample_details);
	tcase_add_test(tc, test_errors);
	tcase_add_test(tc, test_lexicon_sorted);
	tcase_add_test(tc, test_rhyme_by_sound);
	tcase_add_test(tc, test_rhyme_kinds);
	tcase_add_test(tc, test_flow);
	tcase_add_test(tc, test_stems);
	tcase_add_test(tc, test_unicode_normalization);
#ifdef AIQ_HAVE_ESPEAK
	tcase_add_test(tc, test_phon_parse);
#endif
	suite_add_tcase(s, tc);

	TCase *big = tcase_create("large");
	tcase_set_timeout(big, 120);
	tcase_add_test(big, test_size_limit);
	tcase_add_test(big, test_large_inputs);
	tcase_add_test(big, test_threads);
	suite_add_tcase(s, big);
	return s;
}

int main(void)
{
	return aiq_test_run(lyrics_suite());
}
