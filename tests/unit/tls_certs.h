/* tests/unit/tls_certs.h — test certificates made at test time with the openssl CLI: a CA, and
 * certificates signed by it for 127.0.0.1 / localhost usable by a server and a client alike. */
#ifndef DUET_TESTS_TLS_CERTS_H
#define DUET_TESTS_TLS_CERTS_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static int tls_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int tls_sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return system(cmd);
}

/* 1 when the openssl CLI is there. */
static int tls_have_openssl(void)
{
    return system("openssl version >/dev/null 2>&1") == 0;
}

/* dir/name.crt and dir/name.key: a self-signed CA. 0 on success. */
static int tls_make_ca(const char *dir, const char *name)
{
    return tls_sh("cd %s && openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=%s "
                  "-keyout %s.key -out %s.crt >/dev/null 2>&1", dir, name, name, name);
}

/* dir/name.crt and dir/name.key signed by the CA dir/ca.{crt,key}, for IP 127.0.0.1 and
 * localhost, good for serverAuth and clientAuth. 0 on success. */
static int tls_make_cert(const char *dir, const char *name, const char *ca)
{
    return tls_sh("cd %s && printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n"
                  "extendedKeyUsage=serverAuth,clientAuth\\n' > %s.ext && "
                  "openssl req -newkey rsa:2048 -nodes -subj /CN=%s -keyout %s.key -out %s.csr >/dev/null 2>&1 && "
                  "openssl x509 -req -in %s.csr -CA %s.crt -CAkey %s.key -CAcreateserial -days 2 "
                  "-extfile %s.ext -out %s.crt >/dev/null 2>&1",
                  dir, name, name, name, name, name, ca, ca, name, name);
}

#endif
