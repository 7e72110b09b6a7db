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

/**
 * @defgroup plugins Analyzer plugins
 *
 * A plugin is a shared object that registers analyzers (or tasks) on a
 * worker through the public API only. It exports two functions with C
 * linkage, declared below when the plugin defines `AIQ_PLUGIN` before
 * including this header:
 *
 * - `int aiq_plugin_abi_version(void)` returns #AIQ_PLUGIN_ABI_VERSION as
 *   it was when the plugin was built;
 * - `int aiq_plugin_register(aiq_worker *w)` registers what the plugin
 *   offers, with aiq_worker_add_analyzer() or aiq_worker_register(), and
 *   returns #AIQ_OK or a negative `AIQ_E*` code.
 *
 * ```c
 * #define AIQ_PLUGIN
 * #include <aiqueue/aiqueue.h>
 *
 * AIQ_PLUGIN_EXPORT int aiq_plugin_abi_version(void) { return AIQ_PLUGIN_ABI_VERSION; }
 * AIQ_PLUGIN_EXPORT int aiq_plugin_register(aiq_worker *w)
 * {
 *         return aiq_worker_add_analyzer(w, "wordcount", wordcount, NULL, NULL);
 * }
 * ```
 *
 * The plugin links against libaiqueue (`pkg-config --libs libaiqueue`) and
 * the program loading it must use the shared libaiqueue too, so both share
 * one copy of the library. See docs/plugins.md.
 * @{
 */

/**
 * @brief Marks a plugin's entry points as exported from its shared object
 *        (they stay visible when the plugin is built with hidden visibility).
 * @since 0.1
 */
#if defined(_WIN32)
#define AIQ_PLUGIN_EXPORT __declspec(dllexport)
#elif defined(__GNUC__)
#define AIQ_PLUGIN_EXPORT __attribute__((visibility("default")))
#else
#define AIQ_PLUGIN_EXPORT
#endif

/** @brief Type of a plugin's `aiq_plugin_abi_version` entry point. @since 0.1 */
typedef int (*aiq_plugin_abi_version_fn)(void);

/** @brief Type of a plugin's `aiq_plugin_register` entry point. @since 0.1 */
typedef int (*aiq_plugin_register_fn)(aiq_worker *w);

#if defined(AIQ_PLUGIN)
/** @brief Implemented by a plugin: the ABI it was built for. @since 0.1 */
AIQ_PLUGIN_EXPORT int aiq_plugin_abi_version(void);
/** @brief Implemented by a plugin: register its analyzers and tasks on @p w. @since 0.1 */
AIQ_PLUGIN_EXPORT int aiq_plugin_register(aiq_worker *w);
#endif

/**
 * @brief Load a plugin and let it register its analyzers and tasks.
 *
 * Opens @p path with the dynamic loader (local symbols, resolved at once),
 * checks `aiq_plugin_abi_version()` against the library's
 * #AIQ_PLUGIN_ABI_VERSION, then calls `aiq_plugin_register(w)`. A plugin
 * built for a newer ABI than this library's (or reporting a version below
 * 1) is refused and unloaded before any of its code beyond the version
 * check ran.
 *
 * Once registration has been attempted, the shared object stays loaded until
 * aiq_worker_free(), which unloads it after every destructor has run
 * (destructors may live in the plugin), even when registration failed: the
 * plugin may have registered some callbacks before failing.
 *
 * @param w worker (not running).
 * @param path file name of the shared object (copied). A name containing a
 *        '/' is used as is; a bare name is searched like dlopen() does
 *        (LD_LIBRARY_PATH, the system directories).
 * @return #AIQ_OK;
 *         #AIQ_ENOTFOUND: the file does not exist, or an entry point is
 *         missing (the message names it);
 *         #AIQ_EABI: the plugin was built for another plugin ABI (the message
 *         gives both versions);
 *         #AIQ_EINVAL: NULL argument, or the file is not a loadable shared
 *         object (the loader's message says why);
 *         #AIQ_ESTATE: the worker is running; #AIQ_ENOMEM;
 *         or the negative code the plugin's `aiq_plugin_register` returned.
 *         Details: aiq_error_last().
 * Not thread-safe: call it from the thread configuring the worker.
 * @since 0.1
 */
AIQ_API int aiq_worker_load_plugin(aiq_worker *w, const char *path);

/** @} */

AIQ_END_DECLS

#endif /* AIQUEUE_ANALYZER_H */
