/* tests/unit/test_apikeys.c — the gateway's API keys: "sha256:" entries and plain keys both match
 * their key and nothing else, plain text is wiped from the list it came in, files with comments
 * load, malformed digests are refused, and the digest is the one sha256sum prints. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "apikeys.h"
#include "check.h"

/* printf %s sk-duet-test | sha256sum */
#define TEST_HASH "sha256:e7910e64c1f0f841eb4bdeff49fbfa80aac9d65ce2d657138ce824386ece84ca"

static void test_hash_matches_sha256sum(void)
{
    char out[80];
    duet_apikeys_hash_entry("abc", 3, out, sizeof out);
    /* FIPS 180-2's "abc" example. */
    CHECK(strcmp(out, "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0);
    char cmd[128], line[128] = "";
    snprintf(cmd, sizeof cmd, "printf %%s sk-duet-test | sha256sum 2>/dev/null");
    FILE *p = popen(cmd, "r");
    if (p && fgets(line, sizeof line, p)) {
        duet_apikeys_hash_entry("sk-duet-test", 12, out, sizeof out);
        CHECK(strncmp(out + 7, line, 64) == 0);
        fprintf(stderr, "  sk-duet-test -> %s\n", out);
    }
    if (p)
        pclose(p);
}

static void test_list_of_digests_and_plain_keys(void)
{
    duet_apikeys_t k = {0};
    char err[256] = "";
    char hashed[80];
    duet_apikeys_hash_entry("alpha-key", 9, hashed, sizeof hashed);
    char list[256];
    snprintf(list, sizeof list, " %s , beta-key\n gamma-key # a comment, not-a-key\n", hashed);
    CHECK_EQ_INT(duet_apikeys_add_list(&k, list, err, sizeof err), DUET_OK);
    CHECK_EQ_INT(k.n, 3);
    CHECK_EQ_INT(k.n_plain, 2);
    CHECK_EQ_INT(duet_apikeys_match(&k, "alpha-key", 9), 0);
    CHECK_EQ_INT(duet_apikeys_match(&k, "beta-key", 8), 1);
    CHECK_EQ_INT(duet_apikeys_match(&k, "gamma-key", 9), 2);
    CHECK_EQ_INT(duet_apikeys_match(&k, "not-a-key", 9), -1);
    CHECK_EQ_INT(duet_apikeys_match(&k, "alpha-ke", 8), -1);
    CHECK_EQ_INT(duet_apikeys_match(&k, "", 0), -1);
    /* The digest itself is not a key. */
    CHECK_EQ_INT(duet_apikeys_match(&k, hashed, strlen(hashed)), -1);
    /* The plain keys are gone from the list's memory; the digest entry is left as it was. */
    CHECK(strstr(list, "beta-key") == NULL);
    CHECK(strstr(list, "gamma-key") == NULL);
    CHECK(strstr(list, hashed) != NULL);
    duet_apikeys_cleanup(&k);
}

static void test_upper_case_hex_and_bad_entries(void)
{
    duet_apikeys_t k = {0};
    char err[256] = "";
    char list[128] = "SHA256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD";
    CHECK_EQ_INT(duet_apikeys_add_list(&k, list, err, sizeof err), DUET_OK);
    CHECK_EQ_INT(duet_apikeys_match(&k, "abc", 3), 0);
    char short_hex[] = "sha256:ba7816bf";
    CHECK_EQ_INT(duet_apikeys_add_list(&k, short_hex, err, sizeof err), DUET_ERR_INVALID);
    CHECK_STR_CONTAINS(err, "64 hex digits");
    char not_hex[] = "sha256:zz7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    CHECK_EQ_INT(duet_apikeys_add_list(&k, not_hex, err, sizeof err), DUET_ERR_INVALID);
    CHECK_STR_CONTAINS(err, "not hexadecimal");
    CHECK_EQ_INT(k.n, 1);
    duet_apikeys_cleanup(&k);
}

static void test_file(void)
{
    char path[] = "/tmp/duet-keys-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd < 0)
        return;
    FILE *f = fdopen(fd, "w");
    fprintf(f, "# duet gateway keys\n%s\nsha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  # abc\n\n",
            TEST_HASH);
    fclose(f);
    duet_apikeys_t k = {0};
    char err[256] = "";
    CHECK_EQ_INT(duet_apikeys_add_file(&k, path, err, sizeof err), DUET_OK);
    CHECK_EQ_INT(k.n, 2);
    CHECK_EQ_INT(k.n_plain, 0);
    CHECK_EQ_INT(duet_apikeys_match(&k, "abc", 3), 1);
    unlink(path);
    CHECK_EQ_INT(duet_apikeys_add_file(&k, path, err, sizeof err), DUET_ERR_INVALID);
    CHECK_STR_CONTAINS(err, "No such file");
    duet_apikeys_cleanup(&k);
}

/* `duet apikey` prints a key and its entry; the entry matches the key, and --hash agrees. */
static void test_duet_apikey_command(const char *duet)
{
    char cmd[1024], line[256], key[256] = "", entry[256] = "";
    snprintf(cmd, sizeof cmd, "%s apikey 2>/dev/null", duet);
    FILE *p = popen(cmd, "r");
    CHECK(p != NULL);
    if (!p)
        return;
    while (fgets(line, sizeof line, p)) {
        line[strcspn(line, "\n")] = '\0';
        if (strncmp(line, "key:   ", 7) == 0)
            snprintf(key, sizeof key, "%s", line + 7);
        else if (strncmp(line, "entry: ", 7) == 0)
            snprintf(entry, sizeof entry, "%s", line + 7);
    }
    CHECK_EQ_INT(pclose(p), 0);
    CHECK(strlen(key) >= 32);
    duet_apikeys_t k = {0};
    char err[128];
    CHECK_EQ_INT(duet_apikeys_add_list(&k, entry, err, sizeof err), DUET_OK);
    CHECK_EQ_INT(duet_apikeys_match(&k, key, strlen(key)), 0);
    duet_apikeys_cleanup(&k);
    snprintf(cmd, sizeof cmd, "printf '%%s\\n' '%s' | %s apikey --hash", key, duet);
    p = popen(cmd, "r");
    line[0] = '\0';
    if (p) {
        if (!fgets(line, sizeof line, p))
            line[0] = '\0';
        pclose(p);
    }
    line[strcspn(line, "\n")] = '\0';
    char hashed[80];
    duet_apikeys_hash_entry(key, strlen(key), hashed, sizeof hashed);
    CHECK_MSG(strcmp(line, hashed) == 0, "--hash printed \"%s\", want \"%s\"", line, hashed);
}

int main(int argc, char **argv)
{
    RUN_TEST(test_hash_matches_sha256sum);
    RUN_TEST(test_list_of_digests_and_plain_keys);
    RUN_TEST(test_upper_case_hex_and_bad_entries);
    RUN_TEST(test_file);
    if (argc > 1)
        test_duet_apikey_command(argv[1]), fprintf(stderr, "%-48s done\n", "test_duet_apikey_command");
    return check_report();
}
