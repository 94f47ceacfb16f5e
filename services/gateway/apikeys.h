/* services/gateway/apikeys.h — the gateway's API keys, held only as SHA-256 digests. Entries come
 * as "sha256:<64 hex digits>" (the digest of the key, e.g. `printf %s KEY | sha256sum`) or, for
 * backward compatibility, as plain keys, which are hashed on loading and whose text is wiped.
 * A presented key is hashed and compared with every digest in constant time. */
#ifndef DUET_SERVICES_GATEWAY_APIKEYS_H
#define DUET_SERVICES_GATEWAY_APIKEYS_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define DUET_APIKEY_DIGEST 32   /* SHA-256 */

typedef struct {
    uint8_t (*digests)[DUET_APIKEY_DIGEST];   /* [n] */
    int n, cap;
    int n_plain;                               /* entries that came as plain keys */
} duet_apikeys_t;

/* Adds the entries of a list separated by commas, blanks or newlines ('#' starts a comment up to
 * the end of the line). The list is written to: plain keys are overwritten in place. INVALID
 * with the reason in err for a malformed "sha256:" entry; NOMEM. */
duet_status_t duet_apikeys_add_list(duet_apikeys_t *keys, char *list, char *err, size_t cap);
/* Adds the entries of a file (same syntax; one per line is the usual form). */
duet_status_t duet_apikeys_add_file(duet_apikeys_t *keys, const char *path, char *err, size_t cap);
/* The index of the key whose digest matches the presented key, or -1. Hashes the key and compares
 * it with every digest (no early exit), so the time does not depend on which key, if any, matched. */
int           duet_apikeys_match(const duet_apikeys_t *keys, const char *key, size_t len);
/* "sha256:<hex>" of a key into out (at least 72 bytes). */
void          duet_apikeys_hash_entry(const char *key, size_t len, char *out, size_t cap);
void          duet_apikeys_cleanup(duet_apikeys_t *keys);

#endif
