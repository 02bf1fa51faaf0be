"""Where a worker's start-up time goes: one log line, phase by phase.

A bare GPU machine takes minutes to start an 8B worker (weights made or read, the KV pool,
kernels compiled on first use, CUDA graphs captured); the line says which phase to shorten.
"""

from __future__ import annotations

import time

import torch


class StartupPhases:
    """Laps of one start. Each lap first waits for the device, so that work a phase queued
    on the GPU is counted in that phase and not in the next."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self._started = self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._last
        self._last = now

    def summary(self) -> str:
        total = self._last - self._started
        phases = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in self.seconds.items())
        return f"ready in {total:.1f} s: {phases}"
