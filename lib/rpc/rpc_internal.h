/* lib/rpc/rpc_internal.h — what the lib/rpc sources share and nothing outside lib/rpc sees:
 * protobuf-c <-> gRPC byte buffer conversion and the server's hooks for the health service. */
#ifndef DUET_RPC_INTERNAL_H
#define DUET_RPC_INTERNAL_H

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>

#include "rpc.h"

/* Packs msg into a new byte buffer (caller destroys it); NULL when out of memory. */
grpc_byte_buffer *duet_rpc__pack(const ProtobufCMessage *msg);
/* Unpacks a received buffer; NULL when it does not parse. The buffer is left to the caller. */
ProtobufCMessage *duet_rpc__unpack(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *type);
/* Copies a slice's bytes into dst as a string, cut to dst_size - 1. */
void              duet_rpc__slice_to_str(grpc_slice slice, char *dst, size_t dst_size);
/* The retry-after-ms entry of received trailing metadata, or -1. */
int64_t           duet_rpc__retry_after(const grpc_metadata_array *md);

/* TLS (tls.c): the PEM files' contents, kept as long as the credentials made from them. */
typedef struct {
    char *cert, *key, *ca;
} duet_rpc_tls_pem_t;
void          duet_rpc__tls_pem_free(duet_rpc_tls_pem_t *pem);
/* Server credentials: insecure when tls is NULL, else TLS from its files (read into pem). INVALID,
 * logged, when a file cannot be read or the settings do not fit together. */
duet_status_t duet_rpc__server_creds(const duet_rpc_tls_t *tls, duet_rpc_tls_pem_t *pem,
                                     grpc_server_credentials **creds_p);
/* Channel credentials, the same way (cert + key, when set, make the client certificate). */
duet_status_t duet_rpc__channel_creds(const duet_rpc_tls_t *tls, duet_rpc_tls_pem_t *pem,
                                      grpc_channel_credentials **creds_p);

/* Health: the method entry every server adds to its table (health.c), and what it asks. */
duet_rpc_method_t duet_rpc__health_method(duet_rpc_server_t *server);
int               duet_rpc__server_serving(const duet_rpc_server_t *server);
/* 1 when some method of the table belongs to the named service ("duet.v1.Gateway"). */
int               duet_rpc__server_has_service(const duet_rpc_server_t *server, const char *service);

#endif
