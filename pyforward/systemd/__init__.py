"""systemd: notifications, socket activation, units, install, status."""
