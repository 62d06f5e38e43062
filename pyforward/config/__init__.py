"""Settings: the schema, the loader for flags, environment and file, addresses, access lists."""
