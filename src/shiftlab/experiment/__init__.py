"""Experiments: run a recipe (``run``), dispatch sweeps (``launch``), aggregate results (``report``)."""
