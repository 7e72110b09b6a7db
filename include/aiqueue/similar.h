/**
 * @file similar.h
 * @brief Embeddings of tracks and similarity search, stored in PostgreSQL.
 *
 * A handle on the table aiq_embeddings beside the analysis archive
 * (docs/postgres.md, "Embeddings and similarity search"): one vector per
 * track id, with the model that made it. Searches compare a vector with the
 * stored ones of the same model and size by cosine similarity, in SQL
 * (pgvector's `<=>` when the extension was available at migration time,
 * else a SQL function over `real[]`).
 *
 * Texts are embedded as the `embed.*` configuration keys say: by default
 * the local embedding (hashed character 3-grams: deterministic, no model,
 * it measures shared spelling and not meaning; docs/llm.md).
 *
 * Thread-safety: a handle may be shared by threads (calls are serialized on
 * its one connection). Lists are immutable and may be read from any thread.
 */
#ifndef AIQUEUE_SIMILAR_H
#define AIQUEUE_SIMILAR_H

#include <aiqueue/common.h>
#include <aiqueue/config.h>

AIQ_BEGIN_DECLS

/** @brief The largest k a search accepts (the smallest is 1). @since 0.2 */
#define AIQ_SIMILAR_MAX_K 100

/** @brief Opaque handle on the stored embeddings. @since 0.2 */
typedef struct aiq_similar aiq_similar;

/** @brief Opaque, immutable list of search results, best first. @since 0.2 */
typedef struct aiq_similar_list aiq_similar_list;

/**
 * @brief Open the embeddings of the PostgreSQL store the configuration names.
 *
 * The store is `archive.url` when it is a postgresql:// URL, else
 * `result.url` when that one is; the schema is created or upgraded as the
 * result store's is. The embedder (embed.provider, embed.dims, …) is set up
 * from @p cfg too; @p cfg is not kept.
 *
 * @param out receives the handle (free with aiq_similar_free()).
 * @param cfg the configuration (borrowed).
 * @return 0; #AIQ_EINVAL for NULL arguments or a bad embed setting;
 *         #AIQ_EUNSUPPORTED when neither URL is PostgreSQL or the library
 *         was built without libpq; #AIQ_ESTORE when the server cannot be
 *         reached or the schema not migrated.
 * @since 0.2
 */
AIQ_API int aiq_similar_open(aiq_similar **out, const aiq_config *cfg);

/** @brief Close the handle. NULL is a no-op. @since 0.2 */
AIQ_API void aiq_similar_free(aiq_similar *s);

/**
 * @brief How vectors are stored: "pgvector" or "real[]".
 * @return a static string, or NULL for a NULL handle.
 * @since 0.2
 */
AIQ_API const char *aiq_similar_backend(const aiq_similar *s);

/**
 * @brief Store (or replace) the embedding of a track.
 *
 * The vector is normalised before it is stored; searches compare only
 * vectors of the same @p model and size.
 *
 * @param s the handle.
 * @param track_id the track (UTF-8, 1 to 4096 bytes; copied).
 * @param model the name of what made the vector (UTF-8, 1 to 255 bytes).
 * @param vec @p dims numbers (copied), not all zero, all finite.
 * @param dims from 1 to 16000.
 * @return 0; #AIQ_EINVAL for a bad argument; #AIQ_ESTORE when the store
 *         failed.
 * @since 0.2
 */
AIQ_API int aiq_similar_put(aiq_similar *s, const char *track_id, const char *model,
                            const double *vec, size_t dims);

/**
 * @brief Embed a text with the configured embedder and store it for a track.
 * @param s the handle.
 * @param track_id the track (as for aiq_similar_put()).
 * @param text UTF-8 text (copied).
 * @return 0; #AIQ_EINVAL for a bad argument or a text with nothing to
 *         embed; the embedder's error (docs/llm.md) for the openai
 *         provider; #AIQ_ESTORE when the store failed.
 * @since 0.2
 */
AIQ_API int aiq_similar_put_text(aiq_similar *s, const char *track_id, const char *text);

/**
 * @brief The k tracks most similar to a stored track, best first.
 *
 * Compared with the other tracks whose embedding has the same model and
 * size; the track itself is not in the list.
 *
 * @param out receives the list (free with aiq_similar_list_free()); it may
 *        hold fewer than @p k entries, or none.
 * @param s the handle.
 * @param track_id the track.
 * @param k from 1 to #AIQ_SIMILAR_MAX_K.
 * @return 0; #AIQ_EINVAL for a bad argument or k out of range;
 *         #AIQ_ENOTFOUND when no embedding is stored for the track;
 *         #AIQ_ESTORE when the store failed.
 * @since 0.2
 */
AIQ_API int aiq_similar_to_track(aiq_similar_list **out, aiq_similar *s, const char *track_id,
                                 int k);

/**
 * @brief The k tracks most similar to a text, best first.
 *
 * The text is embedded with the configured embedder and compared with the
 * stored embeddings of the embedder's model and size.
 *
 * @param out receives the list (free with aiq_similar_list_free()).
 * @param s the handle.
 * @param text UTF-8 text.
 * @param k from 1 to #AIQ_SIMILAR_MAX_K.
 * @return 0; #AIQ_EINVAL for a bad argument, k out of range or a text with
 *         nothing to embed; the embedder's error; #AIQ_ESTORE.
 * @since 0.2
 */
AIQ_API int aiq_similar_to_text(aiq_similar_list **out, aiq_similar *s, const char *text, int k);

/** @brief Free a list. NULL is a no-op. @since 0.2 */
AIQ_API void aiq_similar_list_free(aiq_similar_list *l);

/** @brief Number of entries (0 for NULL). @since 0.2 */
AIQ_API size_t aiq_similar_list_count(const aiq_similar_list *l);

/**
 * @brief Track id of entry @p i (borrowed, lives as long as @p l).
 * @return NULL when @p i is out of range.
 * @since 0.2
 */
AIQ_API const char *aiq_similar_list_track_id(const aiq_similar_list *l, size_t i);

/**
 * @brief Cosine similarity of entry @p i (from -1 to 1; 1 = same direction).
 * @return the score, or 0 when @p i is out of range.
 * @since 0.2
 */
AIQ_API double aiq_similar_list_score(const aiq_similar_list *l, size_t i);

/**
 * @brief The list as JSON text: `[{"track_id": "…", "score": 0.93}, …]`.
 * @param out receives the text (free with aiq_free()).
 * @param l the list.
 * @return 0; #AIQ_EINVAL for NULL arguments; #AIQ_ENOMEM.
 * @since 0.2
 */
AIQ_API int aiq_similar_list_json(char **out, const aiq_similar_list *l);

AIQ_END_DECLS

#endif /* AIQUEUE_SIMILAR_H */
