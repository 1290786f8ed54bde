"""Fakes for hardware only (cameras, /dev/video devices, hardware encoders), each mirroring upstream."""
