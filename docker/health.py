#!/usr/bin/env python3
"""docker/health.py — asks a duet service grpc.health.v1.Health/Check; exits 0 when it answers
SERVING, 1 otherwise. The image's healthcheck (`duet-entrypoint health`) runs it.

    health.py HOST:PORT [SERVICE] [--timeout SECONDS]

No generated stubs: the request and response are hand-serialized protobuf. An empty
HealthCheckRequest (service "") is zero bytes; HealthCheckResponse carries its status as field 1,
a varint, so SERVING (1) is the two bytes 08 01 and UNKNOWN (0) is empty."""
import sys

import grpc  # Debian's python3-grpcio

SERVING = 1


def encode_request(service):
    """HealthCheckRequest { string service = 1; } — a length-delimited field when non-empty."""
    data = service.encode()
    if not data:
        return b""
    if len(data) > 127:
        raise ValueError("service name too long")
    return b"\x0a" + bytes([len(data)]) + data


def decode_status(raw):
    """The status (field 1, varint) of a HealthCheckResponse; 0 when absent."""
    i = 0
    while i < len(raw):
        key = raw[i]
        i += 1
        if key == 0x08:
            value, shift = 0, 0
            while i < len(raw):
                b = raw[i]
                i += 1
                value |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            return value
        return 0  # no other field is defined
    return 0


def main(argv):
    args = [a for a in argv[1:] if not a.startswith("--timeout")]
    timeout = 2.0
    for a in argv[1:]:
        if a.startswith("--timeout="):
            timeout = float(a.split("=", 1)[1])
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    target, service = args[0], args[1] if len(args) > 1 else ""
    with grpc.insecure_channel(target) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")  # bytes in, bytes out
        try:
            raw = check(encode_request(service), timeout=timeout)
        except grpc.RpcError as e:
            print(f"health: {target}: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    status = decode_status(raw)
    if status != SERVING:
        print(f"health: {target}: status {status}, not SERVING", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
