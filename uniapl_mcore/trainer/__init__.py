"""Training: the policy step, the UniAPL loop and its driver, config, CLI."""
