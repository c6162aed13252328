"""Experiment tasks: each turns a composed config into rows of metrics in a run folder."""
