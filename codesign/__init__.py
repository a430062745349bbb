"""The simulator: a mapping of an MoE model onto a platform, played by simpy."""
