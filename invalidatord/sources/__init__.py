"""Sources: where changes come from (filesystem, S3 events via SQS, in-memory for tests)."""
