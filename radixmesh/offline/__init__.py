"""`radixmesh offline`: in-process batch inference, JSONL in and JSONL out."""
