/* tests/unit/mkmodel.h — makes a small random model file for a test with `duet mkmodel`, the one
 * way the tests that need a model but not the real one get it. */
#ifndef DUET_TESTS_MKMODEL_H
#define DUET_TESTS_MKMODEL_H

#include <stdio.h>
#include <stdlib.h>

/* Runs `duet_bin mkmodel --out path args`; 0 when the file is made, else -1 with the command
 * printed on stderr. */
static inline int test_mkmodel(const char *duet_bin, const char *path, const char *args)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s' mkmodel --out '%s' %s 2>/dev/null", duet_bin, path, args);
    if (system(cmd) == 0)
        return 0;
    fprintf(stderr, "cannot make a test model with: %s\n", cmd);
    return -1;
}

#endif
