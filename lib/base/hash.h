/* lib/base/hash.h — FNV-1a over bytes, for the small in-memory hash tables of names and tokens. */
#ifndef DUET_BASE_HASH_H
#define DUET_BASE_HASH_H

#include <stddef.h>
#include <stdint.h>

static inline uint64_t duet_hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

#endif
