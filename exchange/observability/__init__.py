"""Watching the hub run: Prometheus metrics, the monitors' health endpoint, alert delivery and
OpenTelemetry traces.

Each mechanism is a module of its own, hooked into the hub by a line or two where the event
happens (a call ends, a batch commits, an alert is raised). Nothing here carries personal data:
labels are methods, outcomes, reasons, departments' endpoints and alert categories.
"""
