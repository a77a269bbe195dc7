"""Sweeps: one job of a Hydra multirun, the monitored metric that ranks jobs, the sweep summary
and the sweep's figure."""
