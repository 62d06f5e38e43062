"""Worker processes: a main process that owns what is one per forwarder (signals, systemd,
discovery, reload, metrics) and N workers that accept on the listeners it bound once.
Loaded only with `workers` above 1: one process stays exactly the runtime of `engine/`."""
