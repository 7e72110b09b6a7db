/*
 * Shared helpers for the Check unit suites.
 */
#ifndef AIQ_TESTUTIL_H
#define AIQ_TESTUTIL_H

#include <check.h>
#include <stddef.h>

/* Read tests/data/<name> (AIQ_TEST_DATA) into a NUL-terminated buffer;
 * aborts the test on failure. Free with free(). */
char *aiq_test_read_data(const char *name, size_t *len);

/* Run one suite and return the process exit status (0 when all passed). */
int aiq_test_run(Suite *s);

#endif
