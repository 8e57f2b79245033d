"""Harnesses that run ComfyUI's library as a host outside a server, shared by tests and benchmarks."""
