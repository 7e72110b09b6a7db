/*
 * Word lists of the lyrics analyzer: stop words, sentiment words and
 * negators, English and Russian, in normalized form (lowercase, ё written
 * as е, apostrophe as U+0027).
 *
 * Each array is sorted by byte value (strcmp order) because the analyzer
 * looks words up with bsearch(); tests/unit/test_lyrics.c checks the order.
 * Keep them sorted when editing.
 */
#ifndef AIQ_LYRICS_LEXICON_H
#define AIQ_LYRICS_LEXICON_H

#include <stddef.h>

/* A sentiment entry: `word` matches exactly, or, when `stem` is set, any
 * word that begins with it (Russian inflects heavily, so its entries are
 * mostly stems: "любов" covers любовь, любовью, любовный). */
struct aiq__lyrics_sentiment {
	const char *word;
	signed char polarity; /* +1 positive, -1 negative */
	unsigned char stem;
};

/* Function words and vocal fillers left out of top_words. */
static const char *const aiq__lyrics_stop_words[] = {
        "a",         "about",      "above",      "after",    "again",     "against", "ah",
        "ain't",     "all",        "am",         "an",       "and",       "any",     "are",
        "aren't",    "as",         "at",         "be",       "because",   "been",    "before",
        "being",     "below",      "between",    "both",     "but",       "by",      "can",
        "can't",     "cannot",     "could",      "couldn't", "da",        "did",     "didn't",
        "do",        "does",       "doesn't",    "doing",    "don't",     "down",    "during",
        "each",      "em",         "ever",       "every",    "few",       "for",     "from",
        "further",   "get",        "gonna",      "got",      "gotta",     "had",     "hadn't",
        "has",       "hasn't",     "have",       "haven't",  "having",    "he",      "he'd",
        "he'll",     "he's",       "her",        "here",     "here's",    "hers",    "herself",
        "hey",       "him",        "himself",    "his",      "how",       "how's",   "i",
        "i'd",       "i'll",       "i'm",        "i've",     "if",        "in",      "into",
        "is",        "isn't",      "it",         "it's",     "its",       "itself",  "just",
        "la",        "let",        "let's",      "like",     "me",        "more",    "most",
        "mustn't",   "my",         "myself",     "na",       "never",     "no",      "nor",
        "not",       "now",        "of",         "off",      "oh",        "on",      "once",
        "only",      "ooh",        "or",         "other",    "ought",     "our",     "ours",
        "ourselves", "out",        "over",       "own",      "same",      "shan't",  "she",
        "she'd",     "she'll",     "she's",      "should",   "shouldn't", "so",      "some",
        "still",     "such",       "than",       "that",     "that's",    "the",     "their",
        "theirs",    "them",       "themselves", "then",     "there",     "there's", "these",
        "they",      "they'd",     "they'll",    "they're",  "they've",   "this",    "those",
        "through",   "to",         "too",        "uh",       "under",     "until",   "up",
        "us",        "very",       "wanna",      "was",      "wasn't",    "we",      "we'd",
        "we'll",     "we're",      "we've",      "were",     "weren't",   "what",    "what's",
        "when",      "when's",     "where",      "where's",  "which",     "while",   "who",
        "who's",     "whoa",       "whom",       "why",      "why's",     "will",    "with",
        "won't",     "would",      "wouldn't",   "ya",       "yeah",      "yes",     "yo",
        "you",       "you'd",      "you'll",     "you're",   "you've",    "your",    "yours",
        "yourself",  "yourselves", "а",          "ах",       "без",       "более",   "будет",
        "будешь",    "буду",       "бы",         "был",      "была",      "были",    "было",
        "быть",      "в",          "вам",        "вас",      "весь",      "во",      "вот",
        "все",       "всего",      "всем",       "всех",     "всю",       "вся",     "вы",
        "где",       "да",         "даже",       "для",      "до",        "его",     "ее",
        "ей",        "ему",        "если",       "есть",     "еще",       "ж",       "же",
        "за",        "здесь",      "и",          "из",       "или",       "им",      "их",
        "к",         "как",        "какой",      "ко",       "когда",     "кто",     "ли",
        "лишь",      "ля",         "между",      "меня",     "мне",       "много",   "мной",
        "моей",      "может",      "мои",        "мой",      "мою",       "моя",     "мы",
        "на",        "над",        "нам",        "нас",      "наш",       "не",      "него",
        "нее",       "ней",        "нет",        "ни",       "нибудь",    "никогда", "ним",
        "них",       "ничего",     "но",         "ну",       "о",         "об",      "ой",
        "он",        "она",        "они",        "оно",      "от",        "ох",      "очень",
        "по",        "под",        "после",      "потом",    "потому",    "при",     "про",
        "пусть",     "раз",        "с",          "сам",      "своей",     "свои",    "свой",
        "свою",      "себе",       "себя",       "со",       "так",       "также",   "такой",
        "там",       "твое",       "твоей",      "твои",     "твой",      "твою",    "твоя",
        "те",        "тебе",       "тебя",       "тем",      "теперь",    "то",      "тобой",
        "тогда",     "того",       "тоже",       "только",   "том",       "тут",     "ты",
        "у",         "уж",         "уже",        "хоть",     "чего",      "чем",     "через",
        "что",       "чтоб",       "чтобы",      "эта",      "эти",       "это",     "этот",
        "эх",        "я",
};

/* Words that flip the polarity of the next sentiment word (besides English "...n't"). */
static const char *const aiq__lyrics_negators[] = {
        "cannot", "never", "no", "nor", "not", "without", "без", "не", "нет", "ни", "никогда",
};

/* Sentiment words; a stem matches every word that starts with it. */
static const struct aiq__lyrics_sentiment aiq__lyrics_sentiment_words[] = {
        {"ache", -1, 0},       {"aching", -1, 0},   {"adore", 1, 0},      {"afraid", -1, 0},
        {"alive", 1, 0},       {"alone", -1, 0},    {"angel", 1, 0},      {"anger", -1, 0},
        {"angry", -1, 0},      {"awful", -1, 0},    {"bad", -1, 0},       {"beautiful", 1, 0},
        {"best", 1, 0},        {"betray", -1, 0},   {"betrayed", -1, 0},  {"bitter", -1, 0},
        {"bleed", -1, 0},      {"bleeding", -1, 0}, {"bless", 1, 0},      {"blessed", 1, 0},
        {"bliss", 1, 0},       {"bright", 1, 0},    {"brighter", 1, 0},   {"broke", -1, 0},
        {"broken", -1, 0},     {"calm", 1, 0},      {"celebrate", 1, 0},  {"cheer", 1, 0},
        {"cold", -1, 0},       {"comfort", 1, 0},   {"cried", -1, 0},     {"cries", -1, 0},
        {"cruel", -1, 0},      {"cry", -1, 0},      {"crying", -1, 0},    {"dance", 1, 0},
        {"dancing", 1, 0},     {"dark", -1, 0},     {"darkness", -1, 0},  {"darling", 1, 0},
        {"dead", -1, 0},       {"death", -1, 0},    {"delight", 1, 0},    {"despair", -1, 0},
        {"die", -1, 0},        {"died", -1, 0},     {"dies", -1, 0},      {"dying", -1, 0},
        {"embrace", 1, 0},     {"empty", -1, 0},    {"enemy", -1, 0},     {"fail", -1, 0},
        {"failed", -1, 0},     {"faith", 1, 0},     {"fake", -1, 0},      {"fear", -1, 0},
        {"fears", -1, 0},      {"forgive", 1, 0},   {"free", 1, 0},       {"freedom", 1, 0},
        {"fun", 1, 0},         {"gentle", 1, 0},    {"glad", 1, 0},       {"glory", 1, 0},
        {"glow", 1, 0},        {"golden", 1, 0},    {"good", 1, 0},       {"goodbye", -1, 0},
        {"grace", 1, 0},       {"grief", -1, 0},    {"guilt", -1, 0},     {"happiness", 1, 0},
        {"happy", 1, 0},       {"hate", -1, 0},     {"hated", -1, 0},     {"hates", -1, 0},
        {"hatred", -1, 0},     {"heal", 1, 0},      {"healing", 1, 0},    {"heaven", 1, 0},
        {"hell", -1, 0},       {"hope", 1, 0},      {"hopeless", -1, 0},  {"hopes", 1, 0},
        {"hoping", 1, 0},      {"hug", 1, 0},       {"hurt", -1, 0},      {"hurting", -1, 0},
        {"hurts", -1, 0},      {"joy", 1, 0},       {"joyful", 1, 0},     {"kill", -1, 0},
        {"killed", -1, 0},     {"kind", 1, 0},      {"kiss", 1, 0},       {"kissed", 1, 0},
        {"kisses", 1, 0},      {"laugh", 1, 0},     {"laughing", 1, 0},   {"laughter", 1, 0},
        {"liar", -1, 0},       {"lies", -1, 0},     {"lonely", -1, 0},    {"lose", -1, 0},
        {"losing", -1, 0},     {"lost", -1, 0},     {"love", 1, 0},       {"loved", 1, 0},
        {"lovely", 1, 0},      {"lover", 1, 0},     {"loves", 1, 0},      {"loving", 1, 0},
        {"lucky", 1, 0},       {"mad", -1, 0},      {"magic", 1, 0},      {"miracle", 1, 0},
        {"misery", -1, 0},     {"mourn", -1, 0},    {"nightmare", -1, 0}, {"pain", -1, 0},
        {"painful", -1, 0},    {"paradise", 1, 0},  {"peace", 1, 0},      {"perfect", 1, 0},
        {"pretty", 1, 0},      {"proud", 1, 0},     {"regret", -1, 0},    {"sad", -1, 0},
        {"sadness", -1, 0},    {"safe", 1, 0},      {"scared", -1, 0},    {"scream", -1, 0},
        {"shame", -1, 0},      {"shine", 1, 0},     {"shines", 1, 0},     {"shining", 1, 0},
        {"sick", -1, 0},       {"smile", 1, 0},     {"smiled", 1, 0},     {"smiles", 1, 0},
        {"smiling", 1, 0},     {"soft", 1, 0},      {"sorrow", -1, 0},    {"sorry", -1, 0},
        {"strong", 1, 0},      {"suffer", -1, 0},   {"sunshine", 1, 0},   {"sweet", 1, 0},
        {"sweetest", 1, 0},    {"tears", -1, 0},    {"tender", 1, 0},     {"terrible", -1, 0},
        {"thank", 1, 0},       {"thanks", 1, 0},    {"tired", -1, 0},     {"treasure", 1, 0},
        {"true", 1, 0},        {"trust", 1, 0},     {"ugly", -1, 0},      {"war", -1, 0},
        {"warm", 1, 0},        {"warmth", 1, 0},    {"wasted", -1, 0},    {"weak", -1, 0},
        {"weep", -1, 0},       {"win", 1, 0},       {"wonder", 1, 0},     {"wonderful", 1, 0},
        {"worse", -1, 0},      {"worst", -1, 0},    {"wound", -1, 0},     {"wounded", -1, 0},
        {"wrong", -1, 0},      {"ад", -1, 0},       {"ада", -1, 0},       {"аду", -1, 0},
        {"ангел", 1, 1},       {"бед", -1, 1},      {"блаженств", 1, 1},  {"боли", -1, 0},
        {"болит", -1, 0},      {"боль", -1, 0},     {"больно", -1, 0},    {"болью", -1, 0},
        {"болят", -1, 0},      {"боюсь", -1, 0},    {"верю", 1, 0},       {"весел", 1, 1},
        {"войн", -1, 1},       {"враг", -1, 1},     {"гибел", -1, 1},     {"горе", -1, 0},
        {"горек", -1, 0},      {"горьк", -1, 1},    {"грус", -1, 1},      {"добр", 1, 1},
        {"жесток", -1, 1},     {"жива", 1, 0},      {"живой", 1, 0},      {"зла", -1, 0},
        {"злая", -1, 0},       {"зло", -1, 0},      {"злой", -1, 0},      {"злость", -1, 0},
        {"злые", -1, 0},       {"кошмар", -1, 1},   {"красив", 1, 1},     {"ласк", 1, 1},
        {"лгал", -1, 1},       {"лжец", -1, 0},     {"лжи", -1, 0},       {"ложь", -1, 0},
        {"любви", 1, 0},       {"любил", 1, 1},     {"любим", 1, 1},      {"любит", 1, 0},
        {"любите", 1, 0},      {"любить", 1, 0},    {"любишь", 1, 0},     {"люблю", 1, 0},
        {"любов", 1, 1},       {"любя", 1, 0},      {"любят", 1, 0},      {"мертв", -1, 1},
        {"мечт", 1, 1},        {"милая", 1, 0},     {"мило", 1, 1},       {"милу", 1, 1},
        {"милы", 1, 1},        {"милый", 1, 0},     {"надежд", 1, 1},     {"нежн", 1, 1},
        {"ненавид", -1, 1},    {"ненавиж", -1, 1},  {"ненавист", -1, 1},  {"обид", -1, 1},
        {"обман", -1, 1},      {"обним", 1, 1},     {"объят", 1, 1},      {"одинок", -1, 1},
        {"одиночеств", -1, 1}, {"ошибк", -1, 1},    {"печал", -1, 1},     {"плак", -1, 1},
        {"плач", -1, 1},       {"погиб", -1, 1},    {"потерял", -1, 1},   {"потерян", -1, 1},
        {"поцелу", 1, 1},      {"предал", -1, 1},   {"предат", -1, 1},    {"прекрасн", 1, 1},
        {"пропал", -1, 1},     {"прощай", -1, 0},   {"пуста", -1, 1},     {"пусто", -1, 1},
        {"пусты", -1, 1},      {"рад", 1, 0},       {"рада", 1, 0},       {"радост", 1, 1},
        {"радуе", 1, 1},       {"радуй", 1, 1},     {"разбит", -1, 1},    {"разлук", -1, 1},
        {"рай", 1, 0},         {"рана", -1, 0},     {"ранен", -1, 1},     {"раны", -1, 0},
        {"рая", 1, 0},         {"светл", 1, 1},     {"свобод", 1, 1},     {"сиян", 1, 1},
        {"слез", -1, 1},       {"смерт", -1, 1},    {"солнечн", 1, 1},    {"солнц", 1, 1},
        {"страдан", -1, 1},    {"страх", -1, 1},    {"страш", -1, 1},     {"стыд", -1, 1},
        {"счастлив", 1, 1},    {"счасть", 1, 1},    {"темн", -1, 1},      {"тепл", 1, 1},
        {"тоск", -1, 1},       {"тьм", -1, 1},      {"убий", -1, 1},      {"убит", -1, 1},
        {"улыб", 1, 1},        {"умер", -1, 1},     {"умир", -1, 1},      {"устал", -1, 1},
        {"холод", -1, 1},      {"хорош", 1, 1},     {"целу", 1, 1},       {"чудес", 1, 1},
        {"чудо", 1, 0},
};

#endif /* AIQ_LYRICS_LEXICON_H */
