"""socat's command line and unit files, read into pyforward's settings."""
