"""The pure core: record parsing, key building, fan-out planning and feed-member encoding.

Nothing under this package imports boto3, redis or celery (a test pins that).
"""
