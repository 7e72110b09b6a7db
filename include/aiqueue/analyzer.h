/**
 * @file analyzer.h
 * @brief Named analyzers (text + JSON parameters → JSON) and the built-in
 *        analysis task that runs them.
 *
 * The built-in task (default name "tasks.analyze_track") takes the Celery
 * arguments `(track_id, text)` and the keyword arguments `analyzer` (default
 * "lyrics") and `options` (a JSON object passed to the analyzer as
 * parameters). It stores
 * `{"track_id": …, "analyzer": "<name>", "analysis": <the analyzer's JSON>}`.
 */
#ifndef AIQUEUE_ANALYZER_H
#define AIQUEUE_ANALYZER_H

#include <aiqueue/common.h>
#include <aiqueue/task.h>
#include <aiqueue/worker.h>

AIQ_BEGIN_DECLS

/**
 * @brief An analyzer. Runs on a worker pool thread, possibly on several at once.
 *
 * It reports its outcome on @p task exactly like a task handler:
 * aiq_task_succeed() with a JSON object, aiq_task_fail(), or aiq_task_retry()
 * (for a rate-limited model, say). It may poll aiq_task_cancelled().
 *
 * @param task the running task (borrowed for the call).
 * @param text the text to analyze (UTF-8).
 * @param params_json JSON object text of parameters ("{}" when none).
 * @param userdata as registered.
 * @since 0.1
 */
typedef void (*aiq_analyzer_fn)(aiq_task *task, const char *text, const char *params_json,
                                void *userdata);

/**
 * @brief Register a named analyzer on a worker (replaces a built-in of the
 *        same name, such as "lyrics").
 * @param w worker (not running).
 * @param name analyzer name (copied), as given in the `analyzer` keyword.
 * @param fn analyzer.
 * @param userdata passed to every call.
 * @param destroy called once on @p userdata when the worker is freed, or at
 *        once when registration fails. May be NULL.
 * @return #AIQ_OK, #AIQ_EINVAL, #AIQ_EEXIST (a user analyzer of that name
 *         exists), #AIQ_ESTATE, #AIQ_ENOMEM.
 * @since 0.1
 */
AIQ_API int aiq_worker_add_analyzer(aiq_worker *w, const char *name, aiq_analyzer_fn fn,
                                    void *userdata, aiq_destroy_fn destroy);

/**
 * @brief Run the built-in lyrics analyzer directly, without a queue.
 *
 * See docs/lyrics.md for the features and how each one is computed.
 *
 * @param[out] out receives the analysis JSON object text (free with aiq_free()).
 * @param text lyrics, UTF-8 (English, Russian and other alphabetic scripts).
 * @param params_json JSON object text or NULL; `{"top_words": N}` sets how many
 *        frequent words are listed (default 10).
 * @return #AIQ_OK, #AIQ_EINVAL (text NULL, not UTF-8, or bad params),
 *         #AIQ_EJSON, #AIQ_ETOOBIG (over 1 MiB), #AIQ_ENOMEM.
 * @since 0.1
 */
AIQ_API int aiq_lyrics_analyze(char **out, const char *text, const char *params_json);

AIQ_END_DECLS

#endif /* AIQUEUE_ANALYZER_H */
