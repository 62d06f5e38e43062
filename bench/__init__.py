"""pyforward's benchmark suite: pyforward beside socat, HAProxy and no forwarder at all."""
