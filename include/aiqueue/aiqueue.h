/**
 * @file aiqueue.h
 * @brief Umbrella header: include this one to get the whole public API.
 */
#ifndef AIQUEUE_AIQUEUE_H
#define AIQUEUE_AIQUEUE_H

#include <aiqueue/common.h>
#include <aiqueue/errors.h>
#include <aiqueue/log.h>
#include <aiqueue/version.h>
#include <aiqueue/config.h>
#include <aiqueue/result.h>
#include <aiqueue/task.h>
#include <aiqueue/client.h>
#include <aiqueue/worker.h>
#include <aiqueue/analyzer.h>
#include <aiqueue/canvas.h>
#include <aiqueue/events.h>
#include <aiqueue/similar.h>
#include <aiqueue/beat.h>

#endif /* AIQUEUE_AIQUEUE_H */
