"""The soak and fault suite: real `pyforward run` processes under load and faults.

Run it with `python -m tests.soak [--quick]` (or `scripts/soak`); it is not part of the
default pytest run. Load generators and backends are separate processes (`peers.py`), so
the forwarder is measured, not the generator; `procfs.py` reads the forwarder's
descriptors, memory, CPU and TCP states; `scenarios.py` holds the scenarios and their
criteria; `report.py` prints the table.
"""
