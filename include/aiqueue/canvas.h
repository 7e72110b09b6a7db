/**
 * @file canvas.h
 * @brief Workflows as Celery's canvas: signatures, links, chains, groups and
 *        chords,
 *        sent as Celery 5.2 protocol v2 messages (the `embed` field), so
 *        that Celery workers and libaiqueue workers carry them on alike.
 *
 * A signature names a task with its arguments and options, to be sent
 * later: alone, as a link or errback of another, or as a step of a chain
 * or a member of a group. See docs/workflows.md for what workers do with
 * them and what is not supported yet.
 *
 * Thread-safety: a signature is not locked; use one from one thread at a
 * time (several threads may send the same signature concurrently once it
 * is no longer changed). Every input is copied.
 */
#ifndef AIQUEUE_CANVAS_H
#define AIQUEUE_CANVAS_H

#include <aiqueue/client.h>
#include <aiqueue/common.h>

AIQ_BEGIN_DECLS

/** @brief Opaque signature: a task name, arguments and options. @since 0.2 */
typedef struct aiq_signature aiq_signature;

/**
 * @brief Create a signature of a task with no arguments and no options
 *        (Celery `app.signature(name)`).
 * @param[out] out receives the signature; free it with aiq_signature_free().
 *             NULL on failure.
 * @param task_name registered task name, 1-255 bytes of printable UTF-8 (copied).
 * @return #AIQ_OK, #AIQ_EINVAL (no out, a bad name), #AIQ_ENOMEM.
 * @since 0.2
 */
AIQ_API int aiq_signature_new(aiq_signature **out, const char *task_name);

/** @brief Free a signature. NULL is a no-op. @since 0.2 */
AIQ_API void aiq_signature_free(aiq_signature *s);

/**
 * @brief Set the positional arguments (replacing earlier ones). When the
 *        signature is applied as a link or chain step, the parent's result
 *        is put before them unless the signature is immutable.
 * @param s the signature.
 * @param args_json JSON array text (copied), or NULL for `[]`.
 * @return #AIQ_OK, #AIQ_EINVAL (no signature, not an array), #AIQ_EJSON, #AIQ_ENOMEM.
 * @since 0.2
 */
AIQ_API int aiq_signature_set_args_json(aiq_signature *s, const char *args_json);

/**
 * @brief Set the keyword arguments (replacing earlier ones).
 * @param s the signature.
 * @param kwargs_json JSON object text (copied), or NULL for `{}`.
 * @return #AIQ_OK, #AIQ_EINVAL (no signature, not an object), #AIQ_EJSON, #AIQ_ENOMEM.
 * @since 0.2
 */
AIQ_API int aiq_signature_set_kwargs_json(aiq_signature *s, const char *kwargs_json);

/**
 * @brief Immutable (Celery `.si()`): applied as a link or chain step, the
 *        signature keeps its own arguments and gets no parent result.
 * @param s the signature.
 * @param immutable non-zero for immutable, 0 for not (the default).
 * @return #AIQ_OK, #AIQ_EINVAL (no signature).
 * @since 0.2
 */
AIQ_API int aiq_signature_set_immutable(aiq_signature *s, int immutable);

/**
 * @brief Send the task to this queue (option `queue`) instead of the
 *        sender's configured `queue`.
 * @param s the signature.
 * @param queue queue name (copied), or NULL for the default again.
 * @return #AIQ_OK, #AIQ_EINVAL (no signature, empty or not printable), #AIQ_ENOMEM.
 * @since 0.2
 */
AIQ_API int aiq_signature_set_queue(aiq_signature *s, const char *queue);

/**
 * @brief Use this task id (option `task_id`) instead of a fresh UUID.
 * @param s the signature.
 * @param task_id the id (copied), or NULL for a fresh UUID again.
 * @return #AIQ_OK, #AIQ_EINVAL (no signature, empty, over 155 bytes, not
 *         printable), #AIQ_ENOMEM.
 * @since 0.2
 */
AIQ_API int aiq_signature_set_task_id(aiq_signature *s, const char *task_id);

/**
 * @brief Run no earlier than @p countdown_ms after the signature is sent
 *        (option `countdown`, in seconds on the wire).
 * @param s the signature.
 * @param countdown_ms milliseconds; 0 removes the countdown.
 * @return #AIQ_OK, #AIQ_EINVAL (no signature, negative).
 * @since 0.2
 */
AIQ_API int aiq_signature_set_countdown_ms(aiq_signature *s, int64_t countdown_ms);

/**
 * @brief Add a link (Celery `link`): when the task succeeds, @p callback
 *        is sent with the result put before its arguments (unless immutable).
 * @param s the signature.
 * @param callback the callback (copied as it is now; later changes to it
 *        do not reach @p s).
 * @return #AIQ_OK, #AIQ_EINVAL (either is NULL, or the same object), #AIQ_ENOMEM.
 * @since 0.2
 */
AIQ_API int aiq_signature_add_link(aiq_signature *s, const aiq_signature *callback);

/**
 * @brief Add an errback (Celery `link_error`): when the task ends FAILURE,
 *        @p errback is sent with the failed task's id put before its
 *        arguments (unless immutable).
 * @param s the signature.
 * @param errback the errback (copied as it is now).
 * @return #AIQ_OK, #AIQ_EINVAL (either is NULL, or the same object), #AIQ_ENOMEM.
 * @since 0.2
 */
AIQ_API int aiq_signature_add_link_error(aiq_signature *s, const aiq_signature *errback);

/**
 * @brief The signature as Celery's JSON (`{"task", "args", "kwargs",
 *        "options", "subtask_type", "immutable"}`).
 * @param[out] out receives the text; free it with aiq_free(). NULL on failure.
 * @param s the signature.
 * @return #AIQ_OK, #AIQ_EINVAL, #AIQ_ENOMEM.
 * @since 0.2
 */
AIQ_API int aiq_signature_to_json(char **out, const aiq_signature *s);

/**
 * @brief Send one signature (with its links and errbacks) as a task
 *        (Celery `sig.apply_async()`).
 * @param[out] task_id_out receives the task's id (free with aiq_free()),
 *             NULL on failure; may itself be NULL.
 * @param c the client.
 * @param s the signature (borrowed).
 * @return #AIQ_OK, #AIQ_EINVAL, #AIQ_ETOOBIG, #AIQ_EBROKER, #AIQ_ENOMEM.
 *         Thread-safety: as aiq_client_enqueue().
 * @since 0.2
 */
AIQ_API int aiq_client_send_signature(char **task_id_out, aiq_client *c, const aiq_signature *s);

/**
 * @brief Send a chain (Celery `chain(s0, s1, ...)`): step 0 is sent now;
 *        when step i succeeds, the worker that ran it (Celery's or
 *        libaiqueue's) sends step i + 1 with the result put before its
 *        arguments (unless immutable). A failed step ends the chain.
 *
 * Every step gets its task id now (its own, or a fresh UUID), so the
 * result of any step can be waited for at once; the chain's result is the
 * last step's. Every step has root_id = step 0's id, and parent_id = the
 * step before.
 *
 * @param[out] task_ids_out NULL, or an array of @p n slots: slot i receives
 *             step i's id (free each with aiq_free()); all NULL on failure.
 * @param c the client.
 * @param sigs @p n signatures (borrowed), in the order they run.
 * @param n number of steps, at least 1.
 * @return #AIQ_OK, #AIQ_EINVAL (no client, @p n 0, a NULL step),
 *         #AIQ_ETOOBIG, #AIQ_EBROKER, #AIQ_ENOMEM. Thread-safety: as
 *         aiq_client_enqueue().
 * @since 0.2
 */
AIQ_API int aiq_client_send_chain(char **task_ids_out, aiq_client *c,
                                  const aiq_signature *const *sigs, size_t n);

/**
 * @brief Send a group (Celery `group(s0, s1, ...)`): every member is sent
 *        now, with headers `group` = a fresh group id and `group_index` = i,
 *        to run in parallel. Wait for the members with aiq_client_wait().
 *
 * Members are sent one after the other; when one cannot be sent the call
 * stops there and returns its error: the members before it were sent
 * (their slots of @p task_ids_out are set), the others were not.
 *
 * @param[out] group_id_out receives the group id (free with aiq_free()),
 *             NULL on failure; may itself be NULL.
 * @param[out] task_ids_out NULL, or an array of @p n slots: slot i receives
 *             member i's id once it was sent (free each with aiq_free()),
 *             NULL otherwise.
 * @param c the client.
 * @param sigs @p n signatures (borrowed).
 * @param n number of members, at least 1.
 * @return #AIQ_OK, #AIQ_EINVAL, #AIQ_ETOOBIG, #AIQ_EBROKER, #AIQ_ENOMEM.
 *         Thread-safety: as aiq_client_enqueue().
 * @since 0.2
 */
AIQ_API int aiq_client_send_group(char **group_id_out, char **task_ids_out, aiq_client *c,
                                  const aiq_signature *const *sigs, size_t n);

/**
 * @brief Save a group's result as Celery's `GroupResult.save()` does, so
 *        that `GroupResult.restore(group_id)` (Celery) or
 *        aiq_client_restore_group() finds its members.
 * @param c the client.
 * @param group_id the group id (e.g. from aiq_client_send_group()).
 * @param task_ids @p n member task ids, in order (borrowed).
 * @param n number of members (0 saves an empty group).
 * @return #AIQ_OK, #AIQ_EINVAL, #AIQ_EUNSUPPORTED (the result store cannot
 *         save groups: Redis can), #AIQ_ESTORE, #AIQ_ENOMEM.
 * @since 0.2
 */
AIQ_API int aiq_client_save_group(aiq_client *c, const char *group_id, const char *const *task_ids,
                                  size_t n);

/**
 * @brief Read a saved group's members (Celery `GroupResult.restore()`).
 * @param[out] task_ids_json_out receives a JSON array text of the member
 *             task ids, in order (free with aiq_free()); NULL on failure.
 * @param c the client.
 * @param group_id the group id.
 * @return #AIQ_OK, #AIQ_ENOTFOUND (nothing saved for the group),
 *         #AIQ_EPROTO (not a flat group of task results), #AIQ_EINVAL,
 *         #AIQ_EUNSUPPORTED, #AIQ_ESTORE, #AIQ_ENOMEM.
 * @since 0.2
 */
AIQ_API int aiq_client_restore_group(char **task_ids_json_out, aiq_client *c, const char *group_id);

/**
 * @brief Send a chord (Celery `chord(header)(body)`): the header's members
 *        run in parallel as a group; when every one of them has ended, the
 *        worker that ran the last one sends @p body with the list of their
 *        results (in header order) put before its arguments (unless
 *        immutable). When a member fails, the body is not sent: it ends
 *        FAILURE `ChordError` ("Dependency <id> raised ...") and its
 *        errbacks are sent.
 *
 * The parts are joined in the result store exactly as Celery 5.2's Redis
 * result backend joins them, so header members may run on Celery workers
 * and libaiqueue workers alike and the body runs once. Needs the Redis
 * result store: other stores give #AIQ_EUNSUPPORTED and nothing is sent.
 *
 * @param[out] body_id_out receives the body's task id (its result is the
 *             chord's; free with aiq_free()), NULL on failure; may itself be NULL.
 * @param[out] header_ids_out NULL, or an array of @p n slots: slot i receives
 *             member i's id once it was sent (free each with aiq_free()).
 * @param c the client.
 * @param header @p n signatures (borrowed).
 * @param n number of header members, at least 1.
 * @param body the body (borrowed).
 * @return #AIQ_OK, #AIQ_EINVAL, #AIQ_EUNSUPPORTED (the result store cannot
 *         join chords), #AIQ_ESTORE, #AIQ_ETOOBIG, #AIQ_EBROKER, #AIQ_ENOMEM.
 *         When a member cannot be sent the call stops there (the members
 *         before it were sent; the body will not run).
 *         Thread-safety: as aiq_client_enqueue().
 * @since 0.2
 */
AIQ_API int aiq_client_send_chord(char **body_id_out, char **header_ids_out, aiq_client *c,
                                  const aiq_signature *const *header, size_t n,
                                  const aiq_signature *body);

AIQ_END_DECLS

#endif /* AIQUEUE_CANVAS_H */
