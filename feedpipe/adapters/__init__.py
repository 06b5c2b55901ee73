"""Adapters: the only modules that talk to DynamoDB, the stream APIs, Redis and Celery."""
