// The edge agent's MicroPython (unix port): the standard variant's features, built by
// firmware/interpreter.py with the agent frozen in (firmware/manifest.py).

#define MICROPY_CONFIG_ROM_LEVEL (MICROPY_CONFIG_ROM_LEVEL_EXTRA_FEATURES)

#include "ports/unix/variants/mpconfigvariant_common.h"

// KeyboardInterrupt (SIGINT, and SIGTERM/SIGHUP with patches/0002) is scheduled and raised at the
// VM's next safe point or when a blocking call (select.poll, time.sleep, a socket) is interrupted,
// not raised from inside the signal handler: a service stop must not land in the middle of a heap
// allocation or of mbedtls. A second signal before it is handled ends the process at once.
#undef MICROPY_ASYNC_KBD_INTR
#define MICROPY_ASYNC_KBD_INTR (0)

// Modules are frozen: no user library folders on the default path (MICROPYPATH still adds some).
#define MICROPY_PY_SYS_PATH_DEFAULT ".frozen"
