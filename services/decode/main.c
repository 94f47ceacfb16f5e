/* services/decode/main.c — duet-decode: the service runtime running the decode service. */
#include "decode.h"

int main(int argc, char **argv)
{
    return duet_service_main(&duet_decode_service, argc, argv);
}
