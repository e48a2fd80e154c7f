"""Serving simulation on top of the runtime's programs: request traces (trace.py), one replica's
scheduler and its policies (scheduler.py), the discrete-event serving loop (engine.py)."""
