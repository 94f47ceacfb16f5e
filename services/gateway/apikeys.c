/* services/gateway/apikeys.c — API keys as SHA-256 digests (OpenSSL libcrypto does the hashing
 * and the constant-time comparison). */
#include "apikeys.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#define PREFIX     "sha256:"
#define PREFIX_LEN 7
#define FILE_MAX   (1 << 20)

static int sha256(const void *data, size_t len, uint8_t out[DUET_APIKEY_DIGEST])
{
    unsigned int n = 0;
    return EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) == 1 && n == DUET_APIKEY_DIGEST ? 0 : -1;
}

/* Overwrites a secret so that no copy is left in this memory (not optimized away). */
static void wipe(void *p, size_t n)
{
    OPENSSL_cleanse(p, n);
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static duet_status_t push(duet_apikeys_t *keys, const uint8_t d[DUET_APIKEY_DIGEST])
{
    if (keys->n == keys->cap) {
        int cap = keys->cap ? keys->cap * 2 : 8;
        void *grown = realloc(keys->digests, (size_t)cap * sizeof *keys->digests);
        if (!grown)
            return DUET_ERR_NOMEM;
        keys->digests = grown;
        keys->cap = cap;
    }
    memcpy(keys->digests[keys->n++], d, DUET_APIKEY_DIGEST);
    return DUET_OK;
}

/* One entry, [p, p + len): a digest, or a plain key hashed and then wiped in place. */
static duet_status_t add_entry(duet_apikeys_t *keys, char *p, size_t len, char *err, size_t cap)
{
    uint8_t d[DUET_APIKEY_DIGEST];
    if (len > PREFIX_LEN && strncasecmp(p, PREFIX, PREFIX_LEN) == 0) {
        const char *hex = p + PREFIX_LEN;
        size_t n = len - PREFIX_LEN;
        if (n != 2 * DUET_APIKEY_DIGEST) {
            snprintf(err, cap, "api key entry \"sha256:%.16s…\": needs 64 hex digits, has %zu", hex, n);
            return DUET_ERR_INVALID;
        }
        for (size_t i = 0; i < DUET_APIKEY_DIGEST; i++) {
            int hi = hexval((unsigned char)hex[2 * i]), lo = hexval((unsigned char)hex[2 * i + 1]);
            if (hi < 0 || lo < 0) {
                snprintf(err, cap, "api key entry \"sha256:%.16s…\": not hexadecimal", hex);
                return DUET_ERR_INVALID;
            }
            d[i] = (uint8_t)(hi << 4 | lo);
        }
        return push(keys, d);
    }
    int failed = sha256(p, len, d);
    wipe(p, len);
    if (failed) {
        snprintf(err, cap, "api keys: SHA-256 failed");
        return DUET_ERR_INTERNAL;
    }
    keys->n_plain++;
    duet_status_t st = push(keys, d);
    wipe(d, sizeof d);
    return st;
}

duet_status_t duet_apikeys_add_list(duet_apikeys_t *keys, char *list, char *err, size_t cap)
{
    duet_status_t st = DUET_OK;
    char *p = list;
    while (p && *p) {
        if (*p == '#') {                       /* a comment runs to the end of the line */
            while (*p && *p != '\n')
                p++;
            continue;
        }
        if (*p == ',' || isspace((unsigned char)*p)) {
            p++;
            continue;
        }
        char *start = p;
        while (*p && *p != ',' && *p != '#' && !isspace((unsigned char)*p))
            p++;
        duet_status_t s = add_entry(keys, start, (size_t)(p - start), err, cap);
        if (s != DUET_OK && st == DUET_OK)
            st = s;                            /* go on: every plain key still gets wiped */
    }
    return st;
}

duet_status_t duet_apikeys_add_file(duet_apikeys_t *keys, const char *path, char *err, size_t cap)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, cap, "api keys file %s: %s", path, strerror(errno));
        return DUET_ERR_INVALID;
    }
    char *buf = malloc(FILE_MAX + 1);
    size_t n = buf ? fread(buf, 1, FILE_MAX + 1, f) : 0;
    int bad = ferror(f);
    fclose(f);
    if (!buf)
        return DUET_ERR_NOMEM;
    if (bad || n > FILE_MAX) {
        snprintf(err, cap, "api keys file %s: %s", path, bad ? "read error" : "larger than 1 MiB");
        wipe(buf, n > FILE_MAX ? FILE_MAX : n);
        free(buf);
        return DUET_ERR_INVALID;
    }
    buf[n] = '\0';
    duet_status_t st = duet_apikeys_add_list(keys, buf, err, cap);
    wipe(buf, n);
    free(buf);
    return st;
}

int duet_apikeys_match(const duet_apikeys_t *keys, const char *key, size_t len)
{
    uint8_t d[DUET_APIKEY_DIGEST];
    if (keys->n == 0 || sha256(key, len, d) != 0)
        return -1;
    int found = -1;
    for (int i = 0; i < keys->n; i++) {
        /* eq is 1 or 0; the index is picked with a mask rather than a branch. */
        int eq = CRYPTO_memcmp(d, keys->digests[i], DUET_APIKEY_DIGEST) == 0;
        int mask = -eq;
        found = (found & ~mask) | (i & mask);
    }
    wipe(d, sizeof d);
    return found;
}

void duet_apikeys_hash_entry(const char *key, size_t len, char *out, size_t cap)
{
    uint8_t d[DUET_APIKEY_DIGEST];
    if (cap < PREFIX_LEN + 2 * DUET_APIKEY_DIGEST + 1 || sha256(key, len, d) != 0) {
        if (cap)
            out[0] = '\0';
        return;
    }
    memcpy(out, PREFIX, PREFIX_LEN);
    for (int i = 0; i < DUET_APIKEY_DIGEST; i++)
        snprintf(out + PREFIX_LEN + 2 * i, 3, "%02x", d[i]);
}

void duet_apikeys_cleanup(duet_apikeys_t *keys)
{
    free(keys->digests);
    memset(keys, 0, sizeof *keys);
}
