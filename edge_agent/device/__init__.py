"""The MicroPython device's entry point (main) and its start-up (setup)."""
