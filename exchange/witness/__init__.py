"""Witnesses: C2SP tlog-witness servers that cosign the hub's checkpoints (``server``), the
hub's submissions to them (``submitter``) and the cosignatures and witness policies auditors
check (``cosignature``)."""
