"""The POLAR-format discriminator: input template, scoring service, optional online training."""
