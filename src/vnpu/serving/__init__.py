"""Serving simulation (runtime programs -> request traffic): traces so far (trace.py)."""
