"""One connection's bytes: the connection, the splice and copy directions, pipes, the poller."""
