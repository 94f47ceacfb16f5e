/* lib/rpc/message.c — protobuf-c messages to and from gRPC byte buffers. */
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>

#include "rpc_internal.h"

grpc_byte_buffer *duet_rpc__pack(const ProtobufCMessage *msg)
{
    size_t size = protobuf_c_message_get_packed_size(msg);
    /* Pack straight into the slice the byte buffer will hold: one allocation, no copy. */
    grpc_slice slice = grpc_slice_malloc(size);
    protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(slice));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&slice, 1);
    grpc_slice_unref(slice);
    return bb;
}

ProtobufCMessage *duet_rpc__unpack(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *type)
{
    grpc_byte_buffer_reader reader;
    if (!grpc_byte_buffer_reader_init(&reader, bb))
        return NULL;
    grpc_slice all = grpc_byte_buffer_reader_readall(&reader);
    ProtobufCMessage *msg = protobuf_c_message_unpack(type, NULL, GRPC_SLICE_LENGTH(all),
                                                      GRPC_SLICE_START_PTR(all));
    grpc_slice_unref(all);
    grpc_byte_buffer_reader_destroy(&reader);
    return msg;
}

void duet_rpc__slice_to_str(grpc_slice slice, char *dst, size_t dst_size)
{
    if (!dst || dst_size == 0)
        return;
    size_t n = GRPC_SLICE_LENGTH(slice);
    if (n > dst_size - 1)
        n = dst_size - 1;
    if (n)
        memcpy(dst, GRPC_SLICE_START_PTR(slice), n);
    dst[n] = '\0';
}

int64_t duet_rpc__retry_after(const grpc_metadata_array *md)
{
    for (size_t i = 0; i < md->count; i++) {
        char key[32], val[24];
        duet_rpc__slice_to_str(md->metadata[i].key, key, sizeof key);
        if (strcmp(key, DUET_RPC_RETRY_AFTER_KEY) != 0)
            continue;
        duet_rpc__slice_to_str(md->metadata[i].value, val, sizeof val);
        char *end;
        long long v = strtoll(val, &end, 10);
        return end != val && *end == '\0' && v >= 0 ? (int64_t)v : -1;
    }
    return -1;
}
