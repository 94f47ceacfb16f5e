/* tools/cmd_apikey.c — `duet apikey`: makes a new random API key and prints it with the
 * "sha256:<hex>" entry the gateway is given (--api-keys, --api-keys-file); with --hash, prints the
 * entry of a key read from stdin (the same as `printf %s KEY | sha256sum`). The gateway never
 * needs the key itself. */
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#include "apikeys.h"
#include "commands.h"

typedef struct {
    int hash;
} apikey_conf_t;

static const duet_conf_opt_t apikey_opts[] = {
    {"hash", NULL, DUET_CONF_BOOL, offsetof(apikey_conf_t, hash), "0",
     "read a key from stdin (one line, the newline not part of it) and print only its sha256: entry"},
};

int duet_cmd_apikey(int argc, char **argv)
{
    apikey_conf_t c;
    int rc = duet_tool_parse("duet apikey [--hash < KEY]", apikey_opts, 1, &c, argc, argv);
    if (rc >= 0)
        return rc;
    char key[1024], entry[80];
    if (c.hash) {
        if (!fgets(key, sizeof key, stdin)) {
            fprintf(stderr, "duet apikey: no key on stdin\n");
            return 2;
        }
        size_t n = strcspn(key, "\r\n");
        if (n == 0) {
            fprintf(stderr, "duet apikey: empty key\n");
            return 2;
        }
        duet_apikeys_hash_entry(key, n, entry, sizeof entry);
        memset(key, 0, sizeof key);
        printf("%s\n", entry);
        return entry[0] ? 0 : 1;
    }
    unsigned char raw[24];
    if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw) {
        fprintf(stderr, "duet apikey: no random bytes from the kernel\n");
        return 1;
    }
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    int n = snprintf(key, sizeof key, "duet-");
    for (size_t i = 0; i < sizeof raw; i += 3) {   /* base64url, 4 characters per 3 bytes */
        unsigned v = (unsigned)raw[i] << 16 | (unsigned)raw[i + 1] << 8 | raw[i + 2];
        for (int k = 3; k >= 0; k--)
            key[n++] = alphabet[(v >> (6 * k)) & 63];
    }
    key[n] = '\0';
    duet_apikeys_hash_entry(key, (size_t)n, entry, sizeof entry);
    printf("key:   %s\n", key);
    printf("entry: %s\n", entry);
    fprintf(stderr, "give the client the key, the gateway the entry (--api-keys or a line of --api-keys-file)\n");
    return 0;
}
