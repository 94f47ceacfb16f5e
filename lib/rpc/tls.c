/* lib/rpc/tls.c — TLS credentials for the server and the client from PEM files: server TLS, with
 * or without required client certificates (mutual TLS), and client channels that verify the
 * server against a CA and present a certificate of their own when given one. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/grpc_security.h>

#include "log.h"
#include "rpc_internal.h"

#define PEM_MAX (1 << 20)   /* a certificate chain or key file larger than this is a mistake */

static int set(const char *s)
{
    return s && s[0];
}

/* The whole file as a NUL-terminated string (caller frees), or NULL with the reason logged. */
static char *read_pem(const char *what, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        duet_log_error("rpc: TLS %s %s: %s", what, path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(PEM_MAX + 1);
    size_t n = buf ? fread(buf, 1, PEM_MAX + 1, f) : 0;
    int bad = ferror(f) || n == 0 || n > PEM_MAX;
    fclose(f);
    if (!buf || bad) {
        duet_log_error("rpc: TLS %s %s: %s", what, path, !buf ? "out of memory"
                                                   : n > PEM_MAX ? "larger than 1 MiB" : "empty or unreadable");
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

void duet_rpc__tls_pem_free(duet_rpc_tls_pem_t *pem)
{
    if (!pem)
        return;
    /* The private key leaves no copy of ours behind in freed memory. */
    if (pem->key)
        memset(pem->key, 0, strlen(pem->key));
    free(pem->cert);
    free(pem->key);
    free(pem->ca);
    memset(pem, 0, sizeof *pem);
}

/* Reads the files the conf names; cert and key come as a pair or not at all. */
static duet_status_t pem_load(const duet_rpc_tls_t *tls, duet_rpc_tls_pem_t *pem)
{
    memset(pem, 0, sizeof *pem);
    if (set(tls->cert) != set(tls->key)) {
        duet_log_error("rpc: TLS needs both a certificate and its key (got only the %s)",
                       set(tls->cert) ? "certificate" : "key");
        return DUET_ERR_INVALID;
    }
    if ((set(tls->cert) && !(pem->cert = read_pem("certificate", tls->cert))) ||
        (set(tls->key) && !(pem->key = read_pem("key", tls->key))) ||
        (set(tls->ca) && !(pem->ca = read_pem("CA", tls->ca)))) {
        duet_rpc__tls_pem_free(pem);
        return DUET_ERR_INVALID;
    }
    return DUET_OK;
}

duet_status_t duet_rpc__server_creds(const duet_rpc_tls_t *tls, duet_rpc_tls_pem_t *pem,
                                     grpc_server_credentials **creds_p)
{
    if (!tls) {
        *creds_p = grpc_insecure_server_credentials_create();
        return DUET_OK;
    }
    if (!set(tls->cert)) {
        duet_log_error("rpc: a TLS server needs a certificate and a key");
        return DUET_ERR_INVALID;
    }
    if (tls->client_auth && !set(tls->ca)) {
        duet_log_error("rpc: requiring client certificates needs a CA to verify them with");
        return DUET_ERR_INVALID;
    }
    duet_status_t st = pem_load(tls, pem);
    if (st != DUET_OK)
        return st;
    grpc_ssl_pem_key_cert_pair pair = { .private_key = pem->key, .cert_chain = pem->cert };
    grpc_ssl_client_certificate_request_type req =
        tls->client_auth ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
        : pem->ca        ? GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY
                         : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE;
    grpc_server_credentials *creds = grpc_ssl_server_credentials_create_ex(pem->ca, &pair, 1, req, NULL);
    if (!creds) {
        duet_log_error("rpc: gRPC refused the TLS certificate %s and key %s", tls->cert, tls->key);
        duet_rpc__tls_pem_free(pem);
        return DUET_ERR_INVALID;
    }
    *creds_p = creds;
    return DUET_OK;
}

duet_status_t duet_rpc__channel_creds(const duet_rpc_tls_t *tls, duet_rpc_tls_pem_t *pem,
                                      grpc_channel_credentials **creds_p)
{
    if (!tls) {
        *creds_p = grpc_insecure_credentials_create();
        return DUET_OK;
    }
    duet_status_t st = pem_load(tls, pem);
    if (st != DUET_OK)
        return st;
    grpc_ssl_pem_key_cert_pair pair = { .private_key = pem->key, .cert_chain = pem->cert };
    grpc_channel_credentials *creds = grpc_ssl_credentials_create(pem->ca, pem->cert ? &pair : NULL, NULL, NULL);
    if (!creds) {
        duet_log_error("rpc: gRPC refused the client TLS settings");
        duet_rpc__tls_pem_free(pem);
        return DUET_ERR_INVALID;
    }
    *creds_p = creds;
    return DUET_OK;
}
