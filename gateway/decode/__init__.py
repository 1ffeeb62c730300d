"""Stage 2, decode: payloads -> validated batches resolved against each device's birth (resolve),
births kept as plain records (records), duplicates and gaps (dedupe), what survives a restart (state)."""
