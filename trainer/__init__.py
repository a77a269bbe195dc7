"""gradtrain: a config-driven PyTorch training loop that shows gradient-based minimization."""
