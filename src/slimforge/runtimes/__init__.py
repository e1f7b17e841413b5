"""Runtimes behind one protocol. Adding a runtime means adding one module that calls ``register_runtime``."""

from slimforge.runtimes.base import (Runtime, Session, available_runtimes, default_runtime, get_runtime, open_session,
                                     ort_spin_off, physical_cores, tuned_threads)

__all__ = ["Runtime", "Session", "available_runtimes", "default_runtime", "get_runtime", "open_session",
           "ort_spin_off", "physical_cores", "tuned_threads"]
