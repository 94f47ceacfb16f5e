/* kernels/device.h — the one place a --device name ("cpu", "cuda", "cuda:N") becomes a backend,
 * for the duet command and the compute services alike. */
#ifndef DUET_KERNELS_DEVICE_H
#define DUET_KERNELS_DEVICE_H

#include <stddef.h>

#include "backend.h"

/* Creates the backend a device name asks for; n_threads is the CPU backend's (0: all CPUs).
 * DUET_ERR_INVALID for a name that is none of the above, DUET_ERR_UNSUPPORTED for "cuda" in a
 * build without the CUDA backend, else the backend's own error; why (why_len > 0) gets a
 * one-line reason either way. */
duet_status_t duet_device_open(const char *device, int n_threads, duet_backend_t **be_p, char *why,
                               size_t why_len);

#endif
