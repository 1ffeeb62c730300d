"""Remote commands: handling signed commands from operators and what they change."""
