"""The command line: parses, builds settings, calls the library."""
