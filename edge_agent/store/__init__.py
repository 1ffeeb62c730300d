"""The store: batches kept until delivered (RAM outbox, disk spool), state files, receipts."""
