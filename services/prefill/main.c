/* services/prefill/main.c — duet-prefill: the service runtime running the prefill service. */
#include "prefill.h"

int main(int argc, char **argv)
{
    return duet_service_main(&duet_prefill_service, argc, argv);
}
