"""feedpipe: keeps a social app's home feeds right from its DynamoDB change stream."""
