"""What the forwarder says about itself: log lines, rate limits, counters."""
