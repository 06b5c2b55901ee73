"""Stream consumers: the long-running shard reader, and (later) the Lambda handler."""
