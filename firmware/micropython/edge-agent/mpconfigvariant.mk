# The edge agent's MicroPython: what the agent uses (socket, select, TLS with mbedtls) and not the
# rest of the standard variant (threads, ffi, btree, the line editor, FAT/littlefs).
MICROPY_PY_THREAD = 0
MICROPY_PY_FFI = 0
MICROPY_PY_BTREE = 0
MICROPY_PY_TERMIOS = 0
MICROPY_PY_JNI = 0
MICROPY_USE_READLINE = 0
MICROPY_VFS_FAT = 0
MICROPY_VFS_LFS1 = 0
MICROPY_VFS_LFS2 = 0
MICROPY_PY_SSL = 1
MICROPY_SSL_AXTLS = 0
MICROPY_SSL_MBEDTLS = 1
