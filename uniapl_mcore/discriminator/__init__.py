"""The POLAR-format discriminator: input template (``polar_template``), scoring service and
its client (``service``, ``client``), optional online training (``model_step``,
``offload``).

Import from the submodules; this package imports nothing, so reading the config section
(``discriminator.config``) stays light.
"""
